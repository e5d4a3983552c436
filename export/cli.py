"""`jitnet export`: write ONNX Runtime training artifacts for JITNet."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.config import DistillConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    parser.add_argument("--classes", default="person", help="comma-separated class groups, e.g. person,auto")
    parser.add_argument("--width", type=float, default=0.5, help="width multiplier (1.0 = the paper's ~3M params)")
    parser.add_argument("--size", default="384x640", help="HxW to export at (multiples of 32; any size runs)")
    parser.add_argument("--init", default="default",
                        help="weights to start from: default (the shipped pre-trained student), none (random) "
                             "or a checkpoint from `jitnet pretrain`; its head is cut to --classes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initial weights")
    parser.add_argument("--lr", type=float, default=DistillConfig.learning_rate)
    parser.add_argument("--momentum", type=float, default=DistillConfig.momentum)


def run(args: argparse.Namespace) -> int:
    from export.artifacts import generate
    from export.jitnet import load_student
    from export.pretrained import describe_start, resolve_init

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise SystemExit("--classes needs at least one class group, e.g. --classes person")
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 384x640, got {args.size!r}") from None
    start = resolve_init(args.init, args.width)
    model = None if start is None else load_student(start, width=args.width, classes=classes)
    print(f"jitnet export: the student starts from {describe_start(start)}")
    manifest = generate(
        args.out,
        class_names=classes,
        width=args.width,
        height_px=h,
        width_px=w,
        config=DistillConfig(learning_rate=args.lr, momentum=args.momentum),
        model=model,
        seed=args.seed,
    )
    print(f"wrote {args.out}: classes {manifest.class_names}, width {manifest.width}, "
          f"{manifest.parameter_count:,} parameters, exported at {h}x{w}")
    return 0
