"""`jitnet run SOURCE --teacher URL`: segment a stream with online distillation."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.config import add_config_arguments, config_from_args

log = logging.getLogger(__name__)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    from sdk.session import SessionOptions as O

    parser.add_argument("--classes", default="person", help="class groups, e.g. person,auto")
    parser.add_argument("--artifacts", type=Path, help="artifact directory from `jitnet export` (default: exported on first use)")
    parser.add_argument("--width", type=float, default=0.5, help="student width when exporting on first use")
    parser.add_argument("--init", default="default",
                        help="weights the student starts from when exporting on first use: default (the shipped "
                             "pre-trained student), none (random) or a `jitnet pretrain` checkpoint")
    parser.add_argument("--backend", choices=("ort", "torch"), default="ort")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--state", type=Path, help="state directory: restore at start, save periodically and on exit")
    parser.add_argument("--save-every-s", type=_positive_float, default=O.save_every_s, metavar="SECONDS",
                        help="with --state: snapshot the student this often, and once after its first teacher "
                             "update (default %(default)s)")
    parser.add_argument("--out", type=Path, help="overlay video to write (.mp4)")
    parser.add_argument("--log", type=Path, help="per-frame JSONL log")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--summary", type=Path, help="write the summary as JSON here too")
    parser.add_argument("--no-progress", action="store_true")
    add_config_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="video file, camera index, rtsp:// or http:// URL")
    parser.add_argument("--teacher", required=True,
                        help="grpc://host:port, grpcs://host:port, or embedded[:yolov5s-seg|yolov7-seg]")
    parser.add_argument("--token", help="bearer token for the teacher")
    parser.add_argument("--camera-id", default="cam0",
                        help="this camera's id at the teacher (per-camera tokens and fair queueing)")
    parser.add_argument("--root-cert", type=Path, help="CA certificate (PEM) for a grpcs:// teacher with a private CA")
    parser.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                        help="live mode (default for cameras and URLs) or replay (default for files)")
    parser.add_argument("--degraded-ok", action="store_true",
                        help="start even if the teacher does not answer (segment with the current student)")
    add_field_arguments(parser)
    add_common_arguments(parser)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_field_arguments(parser: argparse.ArgumentParser) -> None:
    """What a camera left running for weeks needs: reconnects, bandwidth, metrics."""
    from sdk.session import SessionOptions as O

    parser.add_argument("--stall-s", type=float, default=O.stall_s,
                        help="reopen a live source that delivers no frame for this many seconds (default %(default)s)")
    parser.add_argument("--max-reconnects", type=_positive_int, default=O.max_reconnects,
                        help="reconnect attempts in a row before a live source ends with an error (default: forever)")
    parser.add_argument("--metrics-port", type=_positive_int, default=None,
                        help="serve Prometheus /metrics and /healthz on this port")
    parser.add_argument("--metrics-host", default=O.metrics_host,
                        help="address the metrics listen on (default %(default)s; 0.0.0.0 for a remote Prometheus)")
    parser.add_argument("--teacher-max-side", type=_positive_int, default=O.teacher_max_side,
                        help="longest side of the frames sent to the teacher, labels upsampled back "
                             "(0 = full size; default %(default)s, see the README's Bandwidth)")
    parser.add_argument("--jpeg-quality", type=int, default=O.jpeg_quality, choices=range(1, 101), metavar="1..100",
                        help="JPEG quality of the frames sent to the teacher (default %(default)s)")


def open_session(args: argparse.Namespace, teacher: str, *, strict: bool = True):
    import sdk

    return sdk.connect(
        teacher,
        config=config_from_args(args),
        classes=args.classes,
        width=args.width,
        init=getattr(args, "init", "default"),
        artifacts=args.artifacts,
        backend=args.backend,
        device=args.device,
        state_dir=args.state,
        save_every_s=args.save_every_s,
        token=getattr(args, "token", None),
        camera_id=getattr(args, "camera_id", "cam0"),
        root_cert=getattr(args, "root_cert", None),
        strict=strict,
        **field_options(args),
    )


def field_options(args: argparse.Namespace) -> dict:
    """The SessionOptions of add_field_arguments, for commands that have them."""
    if not hasattr(args, "stall_s"):
        return {}
    return {"stall_s": args.stall_s, "max_reconnects": args.max_reconnects, "metrics_port": args.metrics_port,
            "metrics_host": args.metrics_host,
            "teacher_max_side": args.teacher_max_side or None, "jpeg_quality": args.jpeg_quality}


def print_summary(summary: dict, path: Path | None) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))


def run(args: argparse.Namespace) -> int:
    from sdk.runner import run_stream

    with open_session(args, args.teacher, strict=not args.degraded_ok) as session:
        print(f"jitnet run: the student starts from {session.start}", file=sys.stderr)
        summary = run_stream(session, args.source, out_video=args.out, log_path=args.log, live=args.live,
                             max_frames=args.max_frames, progress=not args.no_progress)
    print("summary:")
    print_summary(summary, args.summary)
    # SIGTERM is a requested stop (exit 0: supervisors read it as clean); Ctrl-C is 130 as shells expect.
    return 130 if summary.get("interrupted") and not summary.get("terminated") else 0
