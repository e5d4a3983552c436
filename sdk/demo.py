"""`jitnet demo`: the whole system on a real clip, on this machine, with no network.

An embedded teacher with real COCO weights (yolov7-seg from the `yolo` extra)
labels a real street-camera clip that the install provides; the student
learns online and the run ends with the paper's numbers for this clip.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.config import config_from_args, set_config_defaults
from sdk.run_cli import add_common_arguments, open_session, print_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default=None, help="demo clip name (vtest, bikes) or a video path")
    parser.add_argument("--teacher", default="embedded:yolov7-seg",
                        help="embedded:<backend> (default embedded:yolov7-seg) or a grpc:// URL")
    add_common_arguments(parser)
    set_config_defaults(parser, input_scale=0.5)  # the demo's 768x576 clip at half size
    parser.set_defaults(classes="person,auto", out=Path("runs/demo/overlay.mp4"),
                        log=Path("runs/demo/frames.jsonl"), summary=Path("runs/demo/summary.json"),
                        max_frames=400)


def run(args: argparse.Namespace) -> int:
    from sdk.clips import find_clip, first_available
    from sdk.runner import run_stream

    if args.clip is None:
        clip = first_available(("vtest", "bikes"))
    elif Path(args.clip).exists():
        clip = Path(args.clip)
    else:
        clip = find_clip(args.clip)
    print(f"demo: {clip} | teacher {args.teacher} | classes {args.classes} | threshold {config_from_args(args).accuracy_threshold}")
    with open_session(args, args.teacher) as session:
        print(f"demo: the student starts from {session.start}")
        summary = run_stream(session, str(clip), out_video=args.out, log_path=args.log, live=False,
                             max_frames=args.max_frames, progress=not args.no_progress)
    summary["clip"] = str(clip)
    print("summary:")
    print_summary(summary, args.summary)
    return 130 if summary.get("interrupted") and not summary.get("terminated") else 0  # SIGTERM: a clean stop
