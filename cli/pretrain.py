"""`jitnet pretrain`: export.pretrain's command, with teacher-distilled sources resolved first.

``distilled:PATH`` sources need a teacher, which the export layer never
imports; this top-level wrapper has the teacher label them (cached), hands
them on as ``semantic:`` folders and tells the card what they really are
(the video and teacher they came from, and both licences).  Everything else,
the card included, is :mod:`export.pretrain.cli`.
"""
from __future__ import annotations

import argparse

from export.pretrain import cli as _pretrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _pretrain.add_arguments(parser)
    parser.add_argument("--teacher-score-threshold", type=float,
                        help="with distilled: sources, the teacher's score threshold (default: the teacher's own)")


def run(args: argparse.Namespace) -> int:
    from core.groups import GroupError
    from evaluation.cli import default_label_cache
    from evaluation.distilled import licence_of_distilled, materialize
    from export.datasets import SourceError, parse_source

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    cache_root = default_label_cache().parent
    provenance: dict[str, dict] = {}  # semantic spec handed on -> how the card names the distilled source

    def resolve(texts: list[str]) -> list[str]:
        out = []
        for text in texts:
            try:
                spec = parse_source(text)
            except SourceError as exc:
                raise SystemExit(f"jitnet pretrain: {exc}") from None
            if spec.kind != "distilled":
                out.append(text)
                continue
            try:
                out.append(materialize(spec, classes, cache_root, score_threshold=args.teacher_score_threshold))
            except (SourceError, GroupError, ValueError) as exc:
                raise SystemExit(f"jitnet pretrain: source {text!r}: {exc}") from None
            provenance[out[-1]] = {"kind": "distilled", "spec": text, "labels": "teacher-distilled (cached)",
                                   "licence": licence_of_distilled(text)}
        return out

    args.source, args.val = resolve(list(args.source)), resolve(list(args.val))
    return _pretrain.run(args, provenance=provenance)
