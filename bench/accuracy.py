"""`jitnet bench accuracy`: the product's output against the cheap alternatives, on clips nobody tuned to.

One run, one teacher (labels from the label cache, computed once; the teacher
re-timed on a few fresh calls per clip in this run), the same defaults on every
clip. For each clip: the starts (shipped checkpoint, random) x the variants
(``fusion/stride_signal``: the fused student with the default signal, the
student alone as in the paper, ...) x the thresholds, plus Flow (fast) and
Flow (slow) on the same frames. ``long`` is one long non-stationary stream:
the development clips back to back (letterboxed to one size, so every change
of clip is a hard cut), over 1,500 frames. Per row: mean IoU against the
teacher, teacher %, speedup over the teacher on every frame (measured time,
flow included; FLOPs, flow not counted), and the frames until the running IoU
(mean over the last ``--window`` scored frames) first reaches 0.7.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CLIPS = ("vtest:300", "bikes", "cup", "davis", "long")
DAVIS_DEV = ("blackswan", "breakdance", "car-shadow", "dog", "horsejump-high", "kite-surf")
#: The long stream (1,501 frames): 70 s of the static street camera first, then the hand-held and moving clips.
LONG_PARTS = "vtest:700,bikes,cup,davis"
#: Every frame of the long stream is letterboxed to this size (width, height) at scale 0.5.
LONG_SIZE = (384, 256)
STARTS = ("random", "shipped")


def default_variants() -> str:
    """The fused student with the config's defaults, and the student alone with the paper's signal."""
    from core.config import DistillConfig

    d = DistillConfig()
    return f"{d.fusion}/{d.signal},none/paper"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS),
                        help="comma-separated NAME[:FRAMES]: vtest, bikes, cup, a video/frame-folder path, "
                             "'davis' (each DAVIS development sequence played as a stream), or 'long' (the clips "
                             f"{LONG_PARTS} back to back, letterboxed to one size)")
    parser.add_argument("--davis-root", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016")
    parser.add_argument("--teacher", default="embedded:yolov7-seg")
    parser.add_argument("--classes", default="person,auto,bike,animal", help="the same class groups on every clip")
    parser.add_argument("--thresholds", default="0.9")
    parser.add_argument("--starts", default="shipped", help="random and/or shipped (the default checkpoint)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated FUSION/STRIDE_SIGNAL pairs to compare (default: the config's "
                             "defaults, and none/paper: the student alone)")
    parser.add_argument("--time-teacher", type=int, default=3,
                        help="fresh teacher calls per clip that time the teacher in this run")
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
        if name == "long":
            out.append(("long", Path("long"), frames))
        elif name == "davis":
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


def letterbox(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``image`` scaled to fit ``size`` (width, height) and centred on black (label 0), aspect kept."""
    import cv2

    w, h = size
    f = min(w / image.shape[1], h / image.shape[0])
    nw, nh = max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f))
    out = np.zeros((h, w) + image.shape[2:], image.dtype)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=interpolation)
    return out


def long_stream(parts: list[tuple[str, Path, Optional[int]]], teacher: Any, classes: list[str], cache: Any,
                scale: float, max_frames: Optional[int] = None) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Frames, teacher labels and the part names of the clips back to back, letterboxed to ``LONG_SIZE``.

    The labels come from each clip's own cache entry (the teacher on the clip's
    frames), letterboxed with nearest-neighbour sampling like the frames.
    """
    import cv2

    from evaluation.teacher_labels import label_video
    from sdk.streams import read_frames

    frames, labels, names = [], [], []
    for name, path, n in parts:
        clip = read_frames(str(path), max_frames=n, resize=scale if scale != 1 else None)
        vl = label_video(path, clip, teacher, classes, cache, extra=f"scale={scale:g}")
        frames += [letterbox(f, LONG_SIZE, cv2.INTER_AREA) for f in clip]
        labels += [letterbox(lab, LONG_SIZE, cv2.INTER_NEAREST) for lab in vl.labels]
        names += [name] * len(clip)
    if max_frames is not None:
        frames, labels, names = frames[:max_frames], labels[:max_frames], names[:max_frames]
    return frames, labels, names


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
    variants = _variants(args.variants or default_variants())
    cache = LabelCache(args.cache or default_label_cache())
    teacher = TeacherSource(args.teacher, score_threshold=DistillConfig().score_threshold)
    student_starts = {kind: _start(kind, classes) for kind in starts}
    report: dict[str, Any] = {"teacher": args.teacher, "classes": classes, "scale": args.scale,
                              "thresholds": thresholds, "window": args.window, "defaults": DistillConfig().to_dict(),
                              "clips": []}
    try:
        for name, path, max_frames in _clip_list(args.clips, args.davis_root):
            labels = None
            if name == "long":
                parts = _clip_list(LONG_PARTS, args.davis_root)
                frames, labels, names = long_stream(parts, teacher, classes, cache, args.scale, max_frames)
                cuts = [i for i in range(1, len(names)) if names[i] != names[i - 1]]
            else:
                frames = read_frames(str(path), max_frames=max_frames, resize=args.scale if args.scale != 1 else None)
                cuts = []
            clip: dict[str, Any] = {"clip": name, "path": str(path), "frames": len(frames), "cuts": cuts, "rows": []}
            base = StreamEvalOptions(classes=classes, thresholds=thresholds, scale=args.scale,
                                     time_teacher_frames=args.time_teacher)
            flows, _, labels = evaluate_stream(path, frames, teacher, next(iter(student_starts.values())), cache,
                                               replace(base, methods=("flow-fast", "flow-slow")), labels=labels)
            clip["teacher_ms"] = flows["teacher"]["ms_per_frame"]
            clip["teacher_ms_source"] = flows["teacher"]["ms_source"]
            for row in flows["runs"]:
                clip["rows"].append(_row(row, "-", "-", args.window))
            for kind, start in student_starts.items():
                for fusion, signal in variants:
                    config = DistillConfig(fusion=fusion, stride_signal=signal)
                    options = replace(base, methods=("online",), config=config)
                    result, _, _ = evaluate_stream(path, frames, teacher, start, cache, options, labels=labels,
                                                   timed_teacher=(clip["teacher_ms"], clip["teacher_ms_source"]))
                    for row in result["runs"]:
                        clip["rows"].append(_row(row, kind, f"{fusion}/{signal}", args.window))
            report["clips"].append(clip)
            log.info("%s done", name)
            _write(report, args)  # partial results survive an interrupted run
    finally:
        teacher.close()
    report["summary"] = summarise(report)
    _write(report, args)
    print(markdown(report))
    return 0


def _variants(spec: str) -> list[tuple[str, str]]:
    out = []
    for item in (v.strip() for v in spec.split(",") if v.strip()):
        fusion, _, signal = item.partition("/")
        out.append((fusion, signal or "paper"))
    return out


def _row(run: dict[str, Any], start: str, signal: str, window: int) -> dict[str, Any]:
    return {
        "method": run["method"], "start": start, "signal": signal, "threshold": run.get("threshold"),
        "mean_iou": run["mean_iou"], "teacher_percent": 100.0 * run["teacher_fraction"],
        "speedup_ms": run.get("speedup_ms"), "speedup_flops": run.get("speedup_flops"),
        "frames_to_0.7": frames_to(run["per_frame_iou"], 0.7, window), "updates": run.get("updates"),
        "infer_ms": run.get("infer_ms"), "flow_ms": run.get("flow_ms"),
        "carried_fraction": run.get("carried_fraction"),
        "triggers": [run.get("change_triggers", 0), run.get("cut_triggers", 0)],
    }


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Per (start, variant, threshold): mean over clips (the long stream apart), and where it beats
    Flow (fast) in mean IoU at no lower time speedup, and the student alone at the same threshold."""
    out: dict[str, Any] = {}
    for clip in report["clips"]:
        fast = next((r for r in clip["rows"] if r["method"] == "Flow (fast)"), None)
        for r in clip["rows"]:
            if r["start"] == "-":
                continue
            key = f"{r['start']}/{r['signal']}/{r['threshold']:g}"
            s = out.setdefault(key, {"clips": 0, "mean_iou": 0.0, "long_mean_iou": None, "beats_flow_fast": [],
                                     "loses_to_flow_fast": [], "beats_unfused": [], "loses_to_unfused": []})
            if clip["clip"] == "long":
                s["long_mean_iou"] = r["mean_iou"]
            else:
                s["clips"] += 1
                s["mean_iou"] += r["mean_iou"] or 0.0
            if fast is not None:
                wins = (r["mean_iou"] or 0) > (fast["mean_iou"] or 0) and (r["speedup_ms"] or 0) >= (fast["speedup_ms"] or 0)
                (s["beats_flow_fast"] if wins else s["loses_to_flow_fast"]).append(clip["clip"])
            alone = next((a for a in clip["rows"] if a["start"] == r["start"] and a["threshold"] == r["threshold"]
                          and a["signal"].startswith("none/")), None)
            if alone is not None and alone is not r:
                wins = (r["mean_iou"] or 0) > (alone["mean_iou"] or 0)
                (s["beats_unfused"] if wins else s["loses_to_unfused"]).append(clip["clip"])
    for s in out.values():
        s["mean_iou"] = round(s["mean_iou"] / max(1, s["clips"]), 4)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Teacher {report['teacher']}, classes {', '.join(report['classes'])}, scale {report['scale']:g}; "
             f"frames-to-0.7 = first frame where the mean IoU of the last {report['window']} scored frames >= 0.7; "
             "speedup (time) charges flow and fusion on every frame; speedup (FLOPs) does not count flow.", ""]
    for clip in report["clips"]:
        cuts = f", {len(clip['cuts'])} cuts" if clip.get("cuts") else ""
        lines += [f"**{clip['clip']}** ({clip['frames']} frames{cuts}; teacher {_f(clip.get('teacher_ms'), 0)} ms/frame)",
                  "",
                  "| method | start | fusion / stride signal | mean IoU | teacher % | speedup (time) | "
                  "speedup (FLOPs) | frames to 0.7 | carried px |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in clip["rows"]:
            lines.append(f"| {r['method']} | {r['start']} | {r['signal']} | {_f(r['mean_iou'], 3)} | "
                         f"{_f(r['teacher_percent'], 1)} | {_f(r['speedup_ms'], 1, 'x')} | "
                         f"{_f(r['speedup_flops'], 1, 'x')} | {r['frames_to_0.7'] if r['frames_to_0.7'] is not None else 'never'} | "
                         f"{_f(100 * r['carried_fraction'] if r.get('carried_fraction') is not None else None, 0, '%')} |")
        lines.append("")
    if "summary" in report:
        lines += ["| start / variant / threshold | mean IoU over clips | long stream | beats Flow (fast) on | "
                  "loses to Flow (fast) on | beats the student alone on | loses to it on |",
                  "|---|---:|---:|---|---|---|---|"]
        for key, s in report["summary"].items():
            lines.append(f"| {key} | {s['mean_iou']:.3f} | {_f(s['long_mean_iou'], 3)} | "
                         f"{', '.join(s['beats_flow_fast']) or '-'} | {', '.join(s['loses_to_flow_fast']) or '-'} | "
                         f"{', '.join(s['beats_unfused']) or '-'} | {', '.join(s['loses_to_unfused']) or '-'} |")
    return "\n".join(lines) + "\n"


def _f(value: Any, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    (args.markdown or args.json.with_suffix(".md")).write_text(markdown(report))
