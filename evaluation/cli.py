"""`jitnet eval stream|davis`: the paper's evaluations on real video, with reports.

    jitnet eval stream vtest --teacher embedded:yolov5s-seg --frames 300 --json out/vtest.json
    jitnet eval davis --root /data/davis2016 --config C --json out/davis-C.json

Each writes the JSON named by --json and, beside it, a Markdown table (.md)
and a Figure-4-style plot (.png, needs matplotlib); `eval stream --video`
also writes a teacher | student overlay video.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from core.config import add_config_arguments, config_from_args
from sdk.embedded import EMBEDDED, EMBEDDED_TEACHER

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.7,0.8,0.9, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("at least one value is needed")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_start(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("student start (all methods start from the same one)")
    g.add_argument("--artifacts", type=Path, help="artifact directory (from `jitnet export`)")
    g.add_argument("--init", default="default",
                   help="weights to start from: default (the shipped pre-trained student), none (random) or a "
                        "`jitnet pretrain` checkpoint; exported once into the cache")
    g.add_argument("--width", type=float, default=0.5, help="width of the student (the shipped one is 0.5)")
    g.add_argument("--backend", default="ort", choices=("ort", "torch"), help="training runtime")


def _add_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, required=True, help="results file")
    p.add_argument("--markdown", type=Path, help="Markdown table (default: the JSON path with .md)")
    p.add_argument("--plot", type=Path, help="PNG plot (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="EVAL")
    sub.required = True

    s = sub.add_parser("stream", help="long-video protocol: teacher labels as ground truth, online vs baselines",
                       description="The paper's long-video protocol on one clip (Table 2 and Figure 4).")
    s.add_argument("video", help="video file, frame folder, or clip name (vtest, bikes)")
    s.add_argument("--teacher", default=EMBEDDED,
                   help=f"{EMBEDDED} ({EMBEDDED_TEACHER} in process), {EMBEDDED}:NAME (e.g. {EMBEDDED}:yolov5s-seg) "
                        "or grpc://HOST:PORT")
    s.add_argument("--classes", type=_names, default=["person", "auto"], help="comma-separated class groups")
    s.add_argument("--frames", type=int, help="use only the first N frames")
    s.add_argument("--scale", type=float, default=0.5, help="resize frames by this factor once (teacher and student)")
    s.add_argument("--thresholds", type=_floats, default=[0.7, 0.8, 0.9], help="online accuracy thresholds")
    s.add_argument("--methods", type=_names, default=None,
                   help="subset of online,flow-slow,flow-fast,oracle,no-adaptation,fixed (default: all)")
    s.add_argument("--oracle-every", type=int, default=5, help="offline oracle trains on every Nth frame's labels")
    s.add_argument("--oracle-epochs", type=int, default=5, help="passes over the oracle's frames")
    s.add_argument("--first-frame-updates", type=int, default=32, help="updates on frame 0 for No adaptation")
    s.add_argument("--fixed-stride", type=int, help="fixed-stride baseline stride (default: mean stride at 0.8)")
    s.add_argument("--cache", type=Path,
                   help="label cache folder (default: $JITNET_CACHE/labels; ~/.cache/jitnet-edge/labels when unset)")
    s.add_argument("--time-teacher", type=int, default=0, metavar="N",
                   help="when every label is cached, time the teacher on N frames in this run (default: use the "
                        "times recorded in the cache)")
    s.add_argument("--video", dest="video_out", type=Path, help="write a teacher | student overlay video (.mp4)")
    s.add_argument("--video-method", default=None, help="method shown in the video (default: JITNet 0.8)")
    # The paper's other knobs, generated from the config (thresholds and scale are swept/applied above).
    add_config_arguments(s, skip=("accuracy_threshold", "input_scale"))
    _add_start(s)
    _add_outputs(s)

    d = sub.add_parser("davis", help="DAVIS 2016 protocol (supplement): configurations A and C, J and F",
                       description="DAVIS protocol of the paper's supplement on real human ground truth.")
    d.add_argument("--root", type=Path, required=True, help="DAVIS-layout folder (JPEGImages/, Annotations/)")
    d.add_argument("--config", choices=("A", "C"), required=True,
                   help="A: adapt on the first GT frame only; C: first frame + GT every 16 frames")
    d.add_argument("--sequences", type=_names, help="comma-separated sequence names (default: all)")
    d.add_argument("--threshold", type=float, default=0.95, help="train each annotated frame to this IoU")
    d.add_argument("--max-updates", type=int, default=500, help="update budget per annotated frame (the paper's 500)")
    d.add_argument("--scale", type=float, default=0.5, help="frame scale for the student (paper: 1.0)")
    d.add_argument("--no-augment", action="store_true", help="train on the annotated frames as they are")
    d.add_argument("--max-frames", type=int, help="only the first N frames of each sequence (quick checks)")
    d.add_argument("--seed", type=int, default=0)
    _add_start(d)
    _add_outputs(d)


def _command_line() -> str:
    argv = sys.argv[1:]
    if "eval" not in argv:
        return "jitnet eval ..."
    return "jitnet " + " ".join(shlex.quote(a) for a in argv[argv.index("eval"):])


def _write_outputs(args: argparse.Namespace, report: dict[str, Any], markdown: str, plot_fn) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    md_path = args.markdown or args.json.with_suffix(".md")
    report.setdefault("outputs", {})["markdown"] = str(md_path)
    if not args.no_plot:
        png = args.plot or args.json.with_suffix(".png")
        try:
            plot_fn(png)
            report["outputs"]["plot"] = str(png)
        except ImportError as exc:
            log.warning("%s; no plot written", exc)
    md_path.write_text(markdown)
    args.json.write_text(json.dumps(report, indent=2))
    print(markdown)
    print(f"wrote {args.json}, {md_path}" + (f", {report['outputs']['plot']}" if "plot" in report["outputs"] else ""))


def _resolve_video(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    from sdk.clips import ClipNotFound, find_clip

    try:
        return find_clip(name)
    except ClipNotFound as exc:
        raise SystemExit(f"{name} is neither a file nor a known clip: {exc}") from None


def _video_fps(path: Path) -> Optional[float]:
    import cv2

    if path.is_dir():
        return None
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return float(fps) if fps and fps > 0 else None


def run_stream(args: argparse.Namespace) -> int:
    from evaluation.label_cache import LabelCache
    from evaluation.stream_eval import (METHODS, StreamEvalOptions, evaluate_stream, markdown_report,
                                            online_name, reference_threshold, write_overlay_video, write_plot)
    from evaluation.student import resolve_start
    from evaluation.teacher_labels import TeacherSource
    from sdk.streams import read_frames

    video = _resolve_video(args.video)
    config = config_from_args(args)
    video_method = args.video_method or online_name(reference_threshold(args.thresholds))
    options = StreamEvalOptions(
        classes=args.classes, thresholds=args.thresholds, methods=args.methods or METHODS, max_frames=args.frames,
        scale=args.scale, config=config, oracle_every=args.oracle_every, oracle_epochs=args.oracle_epochs,
        first_frame_updates=args.first_frame_updates, fixed_stride=args.fixed_stride,
        time_teacher_frames=args.time_teacher, backend=args.backend,
        keep_labels_for=video_method if args.video_out else None,
    )
    start = resolve_start(args.classes, artifacts=args.artifacts, init=args.init, width=args.width)
    cache_dir = args.cache or default_label_cache()
    frames = read_frames(str(video), max_frames=args.frames, resize=args.scale if args.scale != 1 else None)
    teacher = TeacherSource(args.teacher, score_threshold=config.score_threshold)
    try:
        report, runs, labels = evaluate_stream(video, frames, teacher, start, LabelCache(cache_dir), options)
    finally:
        teacher.close()
    fps = _video_fps(video)
    if args.video_out:
        shown = next((r for r in runs if r.labels is not None), None)
        if shown is None:
            log.warning("no run named %r to draw; choose --video-method from %s", video_method,
                        ", ".join(r.method for r in runs))
        else:
            write_overlay_video(args.video_out, frames, labels, shown.labels, args.classes, fps=fps or 10.0,
                                titles=[f"teacher ({report['teacher']['model_name']})", f"student ({shown.method})"])
            report.setdefault("outputs", {})["video"] = str(args.video_out)
    _write_outputs(args, report, markdown_report(report, _command_line()), lambda p: write_plot(report, p, fps))
    return 0


def run_davis(args: argparse.Namespace) -> int:
    from evaluation.davis_eval import CLASSES, DavisOptions, davis_markdown, evaluate_davis, write_davis_plot
    from evaluation.student import resolve_start

    options = DavisOptions(config=args.config, threshold=args.threshold, max_updates=args.max_updates,
                           scale=args.scale, augment=not args.no_augment, max_frames=args.max_frames,
                           sequences=args.sequences, backend=args.backend, seed=args.seed)
    start = resolve_start(list(CLASSES), artifacts=args.artifacts, init=args.init, width=args.width, new_head=True)
    report = evaluate_davis(args.root, start.artifacts, options)
    report["root"] = str(args.root)
    report["student"] = {**start.to_dict(), "backend": args.backend}
    _write_outputs(args, report, davis_markdown(report, _command_line()), lambda p: write_davis_plot(report, p))
    return 0


def default_label_cache() -> Path:
    """Where the teacher's labels are cached: ``$JITNET_CACHE/labels`` (core.cache)."""
    from core.cache import cache_root

    return cache_root() / "labels"


def run(args: argparse.Namespace) -> int:
    if args.eval_command == "stream":
        return run_stream(args)
    return run_davis(args)
