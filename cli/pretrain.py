"""`jitnet pretrain`: export.pretrain's command, with teacher-distilled sources resolved first.

``distilled:PATH`` sources need a teacher, which the export layer never
imports; this top-level wrapper has the teacher label them (cached) and
hands them on as ``semantic:`` folders.  Everything else is export.pretrain.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from export import pretrain as _pretrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _pretrain.add_arguments(parser)
    parser.add_argument("--teacher-score-threshold", type=float,
                        help="with distilled: sources, the teacher's score threshold (default: the teacher's own)")


def run(args: argparse.Namespace) -> int:
    from core.groups import GroupError
    from evaluation.cli import default_label_cache
    from evaluation.distilled import materialize
    from export.datasets import SourceError, parse_source

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    cache_root = default_label_cache().parent

    distilled: dict[str, str] = {}  # semantic spec handed on -> the distilled spec typed

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
            distilled[out[-1]] = text
        return out

    args.source, args.val = resolve(list(args.source)), resolve(list(args.val))
    code = _pretrain.run(args)
    if distilled:
        name_distilled_sources(_pretrain.card_path(args.out), distilled)
    return code


def name_distilled_sources(card: Path, distilled: dict[str, str]) -> None:
    """The card names a distilled source as it was typed, with its video's and its teacher's licences."""
    from evaluation.distilled import licence_of_distilled

    blob = json.loads(card.read_text())
    for entry in blob.get("data", []):
        typed = distilled.get(entry.get("spec"))
        if typed is not None:
            entry.update(kind="distilled", spec=typed, labels="teacher-distilled (cached)",
                         licence=licence_of_distilled(typed))
    tmp = card.with_suffix(".tmp")
    tmp.write_text(json.dumps(blob, indent=2) + "\n")
    os.replace(tmp, card)
