"""`jitnet pretrain`'s flags and its run: sources in, a student, its resume file and its card out.

The top-level command (``cli/pretrain.py``) adds teacher-distilled sources,
which this side never labels itself, and calls :func:`run`.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Optional, Sequence

from core.config import DistillConfig
from export.augment import Augmentation

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DistillConfig()
    parser.add_argument("--source", action="append", default=[], metavar="KIND:PATH[,k=v...]",
                        help="a training source, repeatable: coco:DIR, yolo-seg:DIR, camvid:DIR[,split=train], "
                             "semantic:IMAGES,labels=DIR,map=8=auto;9=person, distilled:FOLDER_OR_VIDEO"
                             "[,teacher=embedded:yolov7-seg|grpc://HOST:PORT,every=N,max=N]; options max=N, every=N, "
                             "holdout=N (keep N images for validation), repeat=N (N views per epoch)")
    parser.add_argument("--val", action="append", default=[], metavar="KIND:PATH[,k=v...]",
                        help="a validation-only source (same syntax), repeatable")
    parser.add_argument("--coco", type=Path, help="COCO-format dataset folder (same as --source coco:DIR)")
    parser.add_argument("--annotations", type=Path, help="with --coco: instances JSON to use instead of DIR/annotations/instances_*.json")
    parser.add_argument("--split", help="with --coco: pick DIR/annotations/instances_<split>.json when there are several")
    parser.add_argument("--images", type=Path, help="with --coco: image folder, when not DIR/<split>/ or DIR/images/")
    parser.add_argument("--classes", default="person", help="comma-separated class groups, e.g. person,auto,bike,animal")
    parser.add_argument("--width", type=float, default=0.5, help="width multiplier (1.0 = the paper's ~3M params)")
    parser.add_argument("--size", default="384x640", help="HxW of the training views (multiples of 32)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="views per SGD step")
    parser.add_argument("--lr", type=float, default=d.learning_rate)
    parser.add_argument("--momentum", type=float, default=d.momentum)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="learning-rate schedule")
    parser.add_argument("--augment", choices=("paper", "geometric"), default="paper",
                        help="paper: the supplement's flip, scale/crop, small rotation, blur and noise "
                             "(export/augment.py); geometric: flip and scale/crop only")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint to write (for jitnet export --init)")
    parser.add_argument("--init", type=Path, help="continue from a pre-trained student (its head is adapted to --classes)")
    parser.add_argument("--fresh", action="store_true", help="ignore OUT.resume and start over")
    parser.add_argument("--max-images", type=int, help="with --coco: use at most this many images (first by id)")
    parser.add_argument("--val-images", type=int,
                        help="images held out of the pooled training set (default 5%%, 1..200, unless --val or holdout=)")
    parser.add_argument("--include-empty", action="store_true", help="with --coco: also train on images without any requested class")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (0 = load in the training process)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (on a busy CPU, 1 is often much faster than the default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def source_texts(args: argparse.Namespace) -> list[str]:
    """The training sources as ``KIND:PATH[,k=v]`` texts, ``--coco DIR`` and its flags included."""
    texts = list(args.source)
    if args.coco is not None:
        opts = [f"{k}={v}" for k, v in (("annotations", args.annotations), ("images", args.images),
                                          ("split", args.split), ("max", args.max_images)) if v is not None]
        if args.include_empty:
            opts.append("include_empty=1")
        texts.insert(0, ",".join([f"coco:{args.coco}", *opts]))
    elif any(v is not None for v in (args.annotations, args.images, args.split, args.max_images)):
        raise ValueError("--annotations, --images, --split and --max-images go with --coco; "
                         "with --source give them as options: coco:DIR,split=NAME")
    if not texts:
        raise ValueError("no training data: pass --source KIND:PATH (e.g. yolo-seg:data/coco128-seg) or --coco DIR")
    return texts


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as typed, for the card (``jitnet pretrain ...``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "pretrain" in argv:
        argv = argv[argv.index("pretrain") + 1:]
    return shlex.join(["jitnet", "pretrain", *argv])


def recipe_of(args: argparse.Namespace, texts: Sequence[str], classes: Sequence[str]) -> dict:
    """Everything that must match for a kill-and-rerun to resume rather than start over."""
    return {"sources": list(texts), "val": list(args.val), "classes": list(classes), "width": args.width,
            "size": args.size, "batch": args.batch, "lr": args.lr, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "schedule": args.schedule, "augment": args.augment, "seed": args.seed,
            "val_images": args.val_images, "epochs": args.epochs if args.schedule != "constant" else None,
            "init": None if args.init is None else str(args.init)}


def augmentation_of(args: argparse.Namespace) -> Augmentation:
    return Augmentation() if args.augment == "paper" else Augmentation.geometric_only()


def card_recipe(args: argparse.Namespace, command: str, size: tuple[int, int]) -> dict:
    """How the card says the student was made: the command and the settings it resolved to."""
    from export.pretrain.loop import LOSS

    return {"command": command, "seed": args.seed, "epochs": args.epochs, "size": list(size), "batch": args.batch,
            "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay, "schedule": args.schedule,
            "augment": args.augment, "augmentation": asdict(augmentation_of(args)), "threads": args.threads,
            "loss": LOSS}


def run(args: argparse.Namespace, *, provenance: Optional[Mapping[str, Mapping]] = None) -> int:
    """Pre-train, checkpointing every epoch; resume when ``OUT.resume`` is from the same recipe.

    ``provenance``: card fields for sources the caller prepared (spec text -> fields), see
    :func:`export.pretrain.card.describe_sources`.
    """
    import torch

    from core.groups import GroupError
    from export.datasets import SourceError, int_option, open_source, parse_source
    from export.jitnet import CheckpointError, load_student
    from export.pretrain.card import card_of, describe_sources, make_card, write_card
    from export.pretrain.checkpoint import ResumeMismatch, RunFiles, load_resume, resume_path
    from export.pretrain.loop import pretrain
    from export.pretrain.splits import make_splits
    from export.pretrain.views import parse_size

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        size = parse_size(args.size)
        config = DistillConfig(learning_rate=args.lr, momentum=args.momentum)
        texts = source_texts(args)
        specs = [parse_source(t) for t in texts]
        val_specs = [parse_source(t) for t in args.val]
        sources = [open_source(s, classes) for s in specs + val_specs]
        holdouts = [int_option(s, "holdout") for s in specs] + [None] * len(val_specs)
        repeats = [int_option(s, "repeat") for s in specs] + [None] * len(val_specs)
        splits = make_splits(sources, holdouts, list(range(len(specs), len(sources))), args.val_images, args.seed,
                             repeats)
    except (SourceError, GroupError, ValueError) as exc:
        raise SystemExit(f"jitnet pretrain: {exc}") from None
    data = describe_sources(specs + val_specs, sources, val_specs, provenance)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        init = load_student(args.init, width=args.width, classes=classes) if args.init else None
    except (OSError, CheckpointError) as exc:
        raise SystemExit(f"jitnet pretrain: cannot start from {args.init}: {exc}") from None

    recipe = recipe_of(args, texts, classes)
    command = command_line()
    try:
        resume = None if args.fresh else load_resume(args.out, recipe)
    except ResumeMismatch as exc:
        raise SystemExit(f"jitnet pretrain: {exc}") from None
    if resume is not None:
        print(f"jitnet pretrain: resuming {args.out} after epoch {resume.history[-1].epoch} "
              f"({resume_path(args.out)})", file=sys.stderr)
    files = RunFiles(args.out, recipe, classes, size, config, images=len(splits.train), sources=data, command=command)

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, state = pretrain(sources=sources, splits=splits, classes=classes, width=args.width, size=size,
                                epochs=args.epochs, batch=args.batch, config=config, init=init,
                                workers=args.workers, device=device, seed=args.seed,
                                augmentation=augmentation_of(args), schedule=args.schedule,
                                weight_decay=args.weight_decay, resume=resume, progress=not args.no_progress,
                                on_epoch=files.after_epoch)
    except ValueError as exc:
        raise SystemExit(f"jitnet pretrain: {exc}") from None
    finally:
        torch.set_num_threads(threads)  # run() may be called in a process that goes on
    files.finish(model, state)
    write_card(args.out, make_card(args.out, model, classes, state.history, data, card_recipe(args, command, size),
                                   state.wall_seconds, resumed=resume is not None))
    files.discard_resume()
    first, last = state.history[0], state.history[-1]
    print(f"wrote {args.out} and {card_of(args.out)}: {len(splits.train)} training images, {last.epoch} epochs, "
          f"held-out mean IoU {first.val_miou:.3f} -> {last.val_miou:.3f}, {state.wall_seconds / 60:.1f} min; "
          f"next: jitnet export --init {args.out} --classes {','.join(classes)} --width {args.width:g} --out DIR")
    return 0
