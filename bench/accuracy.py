"""`jitnet bench accuracy`: the student's start and the stride signal, on clips nobody tuned to.

One run, one teacher (labels from the label cache, computed once), the same
defaults on every clip. For each clip: {random start, shipped start} x
{stride signal ``paper``, ``unseen``} x the thresholds, plus Flow (fast) and
Flow (slow) on the same frames. Per row: mean IoU against the teacher, teacher
%, speedup over the teacher on every frame (measured time and FLOPs), and the
frames until the running IoU (mean over the last ``--window`` scored frames)
first reaches 0.7.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

DEFAULT_CLIPS = ("vtest:300", "bikes", "cup", "davis")
DAVIS_DEV = ("blackswan", "breakdance", "car-shadow", "dog", "horsejump-high", "kite-surf")
STARTS = ("random", "shipped")
SIGNALS = ("paper", "unseen")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS),
                        help="comma-separated NAME[:FRAMES]: vtest, bikes, cup, a video/frame-folder path, or "
                             "'davis' (each DAVIS development sequence played as a stream)")
    parser.add_argument("--davis-root", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016")
    parser.add_argument("--teacher", default="embedded:yolov7-seg")
    parser.add_argument("--classes", default="person,auto,bike,animal", help="the same class groups on every clip")
    parser.add_argument("--thresholds", default="0.8,0.9")
    parser.add_argument("--starts", default=",".join(STARTS), help="random and/or shipped (the default checkpoint)")
    parser.add_argument("--signals", default=",".join(SIGNALS), help="stride signals to compare")
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=10, help="frames in the running IoU for frames-to-0.7")
    parser.add_argument("--cache", type=Path, help="label cache folder (default: the eval commands')")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, help="default: the JSON path with .md")


def frames_to(per_frame: Sequence[Optional[float]], target: float = 0.7, window: int = 10) -> Optional[int]:
    """Index of the first frame at which the mean IoU of the last ``window`` scored frames is >= target."""
    recent: list[float] = []
    for i, v in enumerate(per_frame):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        recent.append(float(v))
        recent = recent[-window:]
        if len(recent) == window and sum(recent) / window >= target:
            return i
    return None


def _clip_list(spec: str, davis_root: Path) -> list[tuple[str, Path, Optional[int]]]:
    from sdk.clips import CLIPS, find_clip

    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, n = item.partition(":")
        frames = int(n) if n else None
        if name == "davis":
            for seq in DAVIS_DEV:
                folder = davis_root / "JPEGImages" / seq
                if folder.is_dir():
                    out.append((f"davis/{seq}", folder, frames))
                else:
                    log.warning("DAVIS sequence %s not found under %s: skipped", seq, davis_root)
        elif name in CLIPS:
            out.append((name, find_clip(name), frames))
        else:
            out.append((Path(name).name, Path(name), frames))
    return out


def _start(kind: str, classes: list[str]):
    from evaluation.student import resolve_start

    if kind == "random":
        return resolve_start(classes, init="none")
    if kind == "shipped":
        return resolve_start(classes, init="default")
    raise ValueError(f"unknown start {kind!r}; choose from {STARTS}")


def run(args: argparse.Namespace) -> int:
    from core.config import DistillConfig
    from evaluation.cli import default_label_cache
    from evaluation.label_cache import LabelCache
    from evaluation.stream_eval import StreamEvalOptions, evaluate_stream
    from evaluation.teacher_labels import TeacherSource
    from sdk.streams import read_frames

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    starts = [s.strip() for s in args.starts.split(",") if s.strip()]
    signals = [s.strip() for s in args.signals.split(",") if s.strip()]
    cache = LabelCache(args.cache or default_label_cache())
    teacher = TeacherSource(args.teacher, score_threshold=DistillConfig().score_threshold)
    student_starts = {kind: _start(kind, classes) for kind in starts}
    report: dict[str, Any] = {"teacher": args.teacher, "classes": classes, "scale": args.scale,
                              "thresholds": thresholds, "window": args.window, "clips": []}
    try:
        for name, path, max_frames in _clip_list(args.clips, args.davis_root):
            frames = read_frames(str(path), max_frames=max_frames, resize=args.scale if args.scale != 1 else None)
            clip: dict[str, Any] = {"clip": name, "path": str(path), "frames": len(frames), "rows": []}
            base = StreamEvalOptions(classes=classes, thresholds=thresholds, scale=args.scale)
            flows, _, _ = evaluate_stream(path, frames, teacher, next(iter(student_starts.values())), cache,
                                          replace(base, methods=("flow-fast", "flow-slow")))
            clip["teacher_ms"] = flows["teacher"]["ms_per_frame"]
            for row in flows["runs"]:
                clip["rows"].append(_row(row, "-", "-", args.window))
            for kind, start in student_starts.items():
                for signal in signals:
                    options = replace(base, methods=("online",), config=DistillConfig(stride_signal=signal))
                    result, _, _ = evaluate_stream(path, frames, teacher, start, cache, options)
                    for row in result["runs"]:
                        clip["rows"].append(_row(row, kind, signal, args.window))
            report["clips"].append(clip)
            log.info("%s done", name)
            _write(report, args)  # partial results survive an interrupted run
    finally:
        teacher.close()
    report["summary"] = summarise(report)
    _write(report, args)
    print(markdown(report))
    return 0


def _row(run: dict[str, Any], start: str, signal: str, window: int) -> dict[str, Any]:
    return {
        "method": run["method"], "start": start, "signal": signal, "threshold": run.get("threshold"),
        "mean_iou": run["mean_iou"], "teacher_percent": 100.0 * run["teacher_fraction"],
        "speedup_ms": run.get("speedup_ms"), "speedup_flops": run.get("speedup_flops"),
        "frames_to_0.7": frames_to(run["per_frame_iou"], 0.7, window), "updates": run.get("updates"),
    }


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Per (start, signal, threshold): mean over clips, and the clips where it beats Flow (fast)."""
    out: dict[str, Any] = {}
    for clip in report["clips"]:
        fast = next((r for r in clip["rows"] if r["method"] == "Flow (fast)"), None)
        for r in clip["rows"]:
            if r["start"] == "-":
                continue
            key = f"{r['start']}/{r['signal']}/{r['threshold']:g}"
            s = out.setdefault(key, {"clips": 0, "mean_iou": 0.0, "beats_flow_fast": [], "loses_to_flow_fast": []})
            s["clips"] += 1
            s["mean_iou"] += r["mean_iou"] or 0.0
            if fast is not None:
                wins = (r["mean_iou"] or 0) > (fast["mean_iou"] or 0) and (r["speedup_ms"] or 0) >= (fast["speedup_ms"] or 0)
                (s["beats_flow_fast"] if wins else s["loses_to_flow_fast"]).append(clip["clip"])
    for s in out.values():
        s["mean_iou"] = round(s["mean_iou"] / max(1, s["clips"]), 4)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Teacher {report['teacher']}, classes {', '.join(report['classes'])}, scale {report['scale']:g}; "
             f"frames-to-0.7 = first frame where the mean IoU of the last {report['window']} scored frames >= 0.7.", ""]
    for clip in report["clips"]:
        lines += [f"**{clip['clip']}** ({clip['frames']} frames)", "",
                  "| method | start | stride signal | mean IoU | teacher % | speedup (time) | speedup (FLOPs) | frames to 0.7 |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in clip["rows"]:
            lines.append(f"| {r['method']} | {r['start']} | {r['signal']} | {_f(r['mean_iou'], 3)} | "
                         f"{_f(r['teacher_percent'], 1)} | {_f(r['speedup_ms'], 1, 'x')} | "
                         f"{_f(r['speedup_flops'], 1, 'x')} | {r['frames_to_0.7'] if r['frames_to_0.7'] is not None else 'never'} |")
        lines.append("")
    if "summary" in report:
        lines += ["| start / signal / threshold | mean IoU over clips | beats Flow (fast) on | loses on |",
                  "|---|---:|---|---|"]
        for key, s in report["summary"].items():
            lines.append(f"| {key} | {s['mean_iou']:.3f} | {', '.join(s['beats_flow_fast']) or '-'} | "
                         f"{', '.join(s['loses_to_flow_fast']) or '-'} |")
    return "\n".join(lines) + "\n"


def _f(value: Any, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    (args.markdown or args.json.with_suffix(".md")).write_text(markdown(report))
