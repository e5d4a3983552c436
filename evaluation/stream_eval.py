"""The paper's long-video protocol on one clip: online distillation and its baselines, same frames.

The teacher's labels on every frame are the ground truth (cached on disk per
video, teacher and class groups, so a re-run never re-runs the teacher).
Methods, all scored by mean IoU against those labels:

- JITNet online distillation at each accuracy threshold (0.7, 0.8, 0.9), with
  the config's fusion (default: the student fused with the teacher's last
  answer carried by flow); ``online-unfused``: the same with the student alone;
- Flow (slow): teacher every 8th frame + DIS optical flow, MEDIUM preset;
- Flow (fast): teacher every 16th frame + DIS optical flow, ULTRAFAST preset;
- Offline oracle: the same JITNet trained offline on every 5th frame's labels;
- No adaptation: the student trained on the first teacher frame only;
- Fixed stride: the teacher every n frames, n = the mean stride the back-off
  controller used at the reference threshold (0.8).

Speedups over running the teacher on every frame come from costs measured on
this machine in this run (teacher ms per frame, student inference ms, train
step ms) and from FLOPs, as in the paper's Table 2.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from core.config import DistillConfig
from evaluation.baselines import MethodRun, run_agent, run_flow, run_offline_oracle
from evaluation.cost import flow_speedup, speedup_flops, speedup_from_charges, speedup_ms
from evaluation.flow import FAST_INTERVAL, FAST_METHOD, SLOW_INTERVAL, SLOW_METHOD
from evaluation.student import StudentStart, student_gflops

log = logging.getLogger(__name__)

METHODS = ("online", "online-unfused", "flow-slow", "flow-fast", "oracle", "no-adaptation", "fixed")
DEFAULT_THRESHOLDS = (0.7, 0.8, 0.9)
REFERENCE_THRESHOLD = 0.8


@dataclass
class StreamEvalOptions:
    """What to run; defaults follow the paper where it says, and stay CPU-sized where it does not."""

    classes: Sequence[str] = ("person", "auto")
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    methods: Sequence[str] = METHODS
    max_frames: Optional[int] = None
    #: Frames are resized by this factor once; teacher and student both see the resized frames.
    scale: float = 0.5
    config: DistillConfig = field(default_factory=DistillConfig)
    oracle_every: int = 5
    oracle_epochs: int = 5
    #: Updates allowed on the first teacher frame for "No adaptation".
    first_frame_updates: int = 32
    #: Fixed-stride baseline's stride; None = the mean stride of the reference threshold's run.
    fixed_stride: Optional[int] = None
    #: When every label came from the cache, re-time the teacher on this many frames in this run.
    time_teacher_frames: int = 0
    backend: str = "ort"
    keep_labels_for: Optional[str] = None

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if not self.classes:
            raise ValueError("at least one class group is needed, e.g. person")
        if "online" in self.methods and not self.thresholds:
            raise ValueError("online distillation needs at least one threshold")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


def online_name(threshold: float, fused: bool = True) -> str:
    return f"JITNet {threshold:g}" if fused else f"JITNet {threshold:g} unfused"


def unfused(config: DistillConfig) -> DistillConfig:
    """The same run with the student alone (and the paper's stride signal if it watched the fusion)."""
    return replace(config, fusion="none",
                   stride_signal="paper" if config.signal == "change" else config.stride_signal)


def reference_threshold(thresholds: Sequence[float]) -> float:
    """0.8 (the paper's middle setting) when run, else the middle of the given thresholds."""
    ts = sorted(thresholds)
    return REFERENCE_THRESHOLD if REFERENCE_THRESHOLD in ts else ts[len(ts) // 2]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _speedups(run: MethodRun, teacher_ms: float, teacher_gf: Optional[float], student_gf: Optional[dict]) -> dict[str, Any]:
    """Speedup over the teacher on every frame, in measured ms (when the teacher was timed) and in GFLOPs."""
    n = run.frames
    timed = math.isfinite(teacher_ms) and teacher_ms > 0
    counted = bool(teacher_gf and student_gf)
    out: dict[str, Any] = {"speedup_ms": None, "speedup_flops": None}
    if run.kind == "flow":
        if timed:
            out["speedup_ms"] = flow_speedup(n, run.teacher_frames, teacher_cost=teacher_ms, flow_cost=run.flow_ms)
        return out  # no FLOPs count for OpenCV's DIS flow
    if run.kind == "oracle":
        if timed:
            out["speedup_ms"] = speedup_from_charges(n, teacher_ms, [(n, run.infer_ms)])
        if counted:
            out["speedup_flops"] = speedup_from_charges(n, teacher_gf, [(n, student_gf["infer_gflops"])])
        return out
    if timed:
        # Fusion's flow and warps run on every frame: charged with the student's inference (time only).
        flow_ms = run.flow_ms if math.isfinite(run.flow_ms) else 0.0
        train_ms = run.train_step_ms if math.isfinite(run.train_step_ms) else 0.0
        out["speedup_ms"] = speedup_ms(n, run.teacher_frames, run.updates, teacher_ms=teacher_ms,
                                       student_infer_ms=run.infer_ms + flow_ms, train_step_ms=train_ms)
    if counted:
        # Each update is a train step plus the forward pass that checks the accuracy.
        out["speedup_flops"] = speedup_flops(
            n, run.teacher_frames, run.updates, teacher_gflops=teacher_gf,
            student_infer_gflops=student_gf["infer_gflops"],
            train_step_gflops=student_gf["train_step_gflops"] + student_gf["infer_gflops"])
    return out


def evaluate_stream(
    video: Path,
    frames: Sequence[np.ndarray],
    teacher: Any,
    start: StudentStart,
    cache: Any,
    options: StreamEvalOptions,
    *,
    labels: Optional[Sequence[np.ndarray]] = None,
    timed_teacher: Optional[tuple[float, str]] = None,
) -> tuple[dict[str, Any], list[MethodRun], list[np.ndarray]]:
    """Run every requested method on ``frames``; returns (report, runs, teacher labels).

    ``teacher`` is a ``TeacherSource``; ``cache`` a ``LabelCache``.  ``labels``:
    the teacher's labels of every frame when they were assembled elsewhere (a
    stream built from several cached clips); the teacher is then timed on
    ``options.time_teacher_frames`` fresh calls.  ``timed_teacher``: (ms per
    frame, where it comes from) measured earlier in the same run, so several
    calls on one clip share one teacher time instead of re-timing it.
    """
    from core.geometry import Geometry
    from core.manifest import load_manifest
    from evaluation.teacher_labels import VideoLabels, label_video, teacher_gflops, timed_teacher_ms

    if not frames:
        raise ValueError(f"no frames read from {video}")
    groups = list(options.classes)
    n = len(frames)
    t_label = time.perf_counter()
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"{len(labels)} label maps for {n} frames")
        vl = VideoLabels(list(labels), None, Path("-"), n, 0, [])
    else:
        vl = label_video(video, frames, teacher, groups, cache, extra=f"scale={options.scale:g}")
    label_s = time.perf_counter() - t_label
    labels = vl.labels
    teacher_ms = vl.teacher_ms
    if vl.misses == n:
        ms_source = "measured in this run (every frame labelled now)"
    elif vl.misses == 0:
        ms_source = "label cache: measured on this machine when the labels were computed"
    else:
        ms_source = f"mixed: {vl.misses} frames measured in this run, {vl.hits} recorded in the label cache"
    if timed_teacher is not None:
        teacher_ms, ms_source = timed_teacher
    elif vl.misses == 0 and options.time_teacher_frames > 0:
        teacher_ms = timed_teacher_ms(teacher, frames, groups, options.time_teacher_frames)
        ms_source = f"measured in this run on {options.time_teacher_frames} fresh teacher calls"
    model_name, model_version = teacher.identity()
    frame_hw = frames[0].shape[:2]
    t_gf = teacher_gflops(model_name, frame_hw)
    manifest = load_manifest(start.artifacts)
    geo = Geometry.for_frame(frame_hw, options.config.input_scale)
    s_gf = student_gflops(manifest.width, manifest.num_classes, geo.padded_hw)
    log.info("teacher labels: %d cached, %d computed (%.1f s); teacher %.1f ms per frame (%s)",
             vl.hits, vl.misses, label_s, teacher_ms, ms_source)

    runs: list[MethodRun] = []
    keep = options.keep_labels_for
    ref = None
    if "online" in options.methods:
        ref = reference_threshold(options.thresholds)
        for thr in options.thresholds:
            cfg = replace(options.config, accuracy_threshold=float(thr))
            runs.append(run_agent(online_name(thr), "online", frames, labels, groups, start.artifacts, cfg,
                                  keep_labels=keep == online_name(thr), backend=options.backend))
    if "online-unfused" in options.methods:
        for thr in options.thresholds:
            cfg = unfused(replace(options.config, accuracy_threshold=float(thr)))
            runs.append(run_agent(online_name(thr, False), "online", frames, labels, groups, start.artifacts,
                                  cfg, keep_labels=keep == online_name(thr, False), backend=options.backend))
    if "flow-slow" in options.methods:
        runs.append(run_flow("Flow (slow)", frames, labels, groups, flow_method=SLOW_METHOD, interval=SLOW_INTERVAL,
                             keep_labels=keep == "Flow (slow)"))
    if "flow-fast" in options.methods:
        runs.append(run_flow("Flow (fast)", frames, labels, groups, flow_method=FAST_METHOD, interval=FAST_INTERVAL,
                             keep_labels=keep == "Flow (fast)"))
    if "oracle" in options.methods:
        runs.append(run_offline_oracle(frames, labels, groups, start.artifacts, options.config,
                                       every=options.oracle_every, epochs=options.oracle_epochs,
                                       keep_labels=keep == "Offline oracle", backend=options.backend))
    if "no-adaptation" in options.methods:
        from edge_agent.stride import FixedStride

        cfg = replace(options.config, accuracy_threshold=reference_threshold(options.thresholds),
                      max_updates=options.first_frame_updates)
        run = run_agent("No adaptation", "no_adaptation", frames, labels, groups, start.artifacts, cfg,
                        controller=FixedStride(n + 1, cfg), keep_labels=keep == "No adaptation",
                        backend=options.backend)
        run.notes = (f"trained on frame 0's teacher labels only (up to {cfg.max_updates} updates or mean IoU "
                     f">= {cfg.accuracy_threshold:g}), no teacher afterwards")
        runs.append(run)
    fixed_stride = options.fixed_stride
    if "fixed" in options.methods:
        from edge_agent.stride import FixedStride

        if fixed_stride is None:
            ref_run = next((r for r in runs if ref is not None and r.method == online_name(ref)), None)
            if ref_run is None or ref_run.mean_stride is None:
                raise ValueError("the fixed-stride baseline takes its stride from the online run at threshold 0.8; "
                                 "run it too (--methods online,...) or give --fixed-stride N")
            fixed_stride = max(1, int(round(ref_run.mean_stride)))
        thr = reference_threshold(options.thresholds)
        cfg = replace(options.config, accuracy_threshold=thr)
        run = run_agent(f"Fixed stride {fixed_stride}", "fixed", frames, labels, groups, start.artifacts, cfg,
                        controller=FixedStride(fixed_stride, cfg),
                        keep_labels=keep in ("fixed", f"Fixed stride {fixed_stride}"),
                        backend=options.backend)
        run.notes = f"teacher every {fixed_stride} frames (mean stride of {online_name(thr)}), same update rule"
        runs.append(run)

    rows = []
    for run in runs:
        row = run.to_dict()
        row.update(_speedups(run, teacher_ms, t_gf["gflops"] if t_gf else None, s_gf))
        rows.append(row)
    report = {
        "video": str(video),
        "frames": n,
        "frame_size": list(frame_hw),
        "scale": options.scale,
        "classes": groups,
        "config": options.config.to_dict(),
        "thresholds": list(options.thresholds),
        "reference_threshold": ref,
        "fixed_stride": fixed_stride,
        "teacher": {
            "spec": teacher.spec,
            "model_name": model_name,
            "model_version": model_version,
            "ms_per_frame": teacher_ms,
            "ms_source": ms_source,
            "gflops": t_gf,
            "frames_labelled_this_run": teacher.calls,
        },
        "label_cache": {"dir": str(vl.cache_dir), "hits": vl.hits, "misses": vl.misses, "seconds": label_s},
        "student": {**start.to_dict(), "gflops": s_gf, "padded_input": list(geo.padded_hw), "backend": options.backend},
        "cost_model": "speedup = n*teacher / (n*student_infer + teacher_frames*teacher + updates*train_step); "
                      "flow: n*teacher / (keyframes*teacher + other frames*flow); oracle: inference only; "
                      "fused online runs add flow + fusion ms to every frame's inference ms (time); "
                      "the FLOPs speedup does not count OpenCV's flow",
        "runs": rows,
    }
    return _clean(report), runs, labels


def markdown_report(report: dict[str, Any], command: Optional[str] = None) -> str:
    """The stream evaluation as Markdown: setup lines and the Table-2-style table."""
    from evaluation.report import lvs_table

    t, s = report["teacher"], report["student"]
    start = "pre-trained checkpoint " + str(s["init"]) if s["from_init"] else (
        f"artifacts {s['artifacts']}" + (" (given)" if s["how"] == "--artifacts" else " (random init)"))
    lines = [
        f"Video `{Path(report['video']).name}`, {report['frames']} frames at {report['frame_size'][1]}x"
        f"{report['frame_size'][0]} (scale {report['scale']:g}); classes {', '.join(report['classes'])}.",
        f"Teacher {t['model_name']} ({t['ms_per_frame']:.0f} ms/frame, {t['ms_source']}"
        + (f"; {t['gflops']['gflops']:.1f} GFLOPs/frame" if t.get("gflops") else "") + ").",
        f"Student: width {s['width']:g} JITNet, {start}; "
        + (f"{s['gflops']['infer_gflops']:.2f} GFLOPs inference at {s['gflops']['input']}." if s.get("gflops") else ""),
        f"Label cache: {report['label_cache']['hits']} hits, {report['label_cache']['misses']} computed.",
    ]
    if command:
        lines.append(f"\nCommand: `{command}`")
    title = f"Stream evaluation on {Path(report['video']).name} (ground truth: {t['model_name']} labels)"
    notes = [f"- {r['method']}: {r['notes']}" for r in report["runs"] if r.get("notes")]
    tail = ("\n" + "\n".join(notes) + "\n") if notes else ""
    return "\n".join(lines) + "\n\n" + lvs_table(report["runs"], title=title) + tail


def write_plot(report: dict[str, Any], path: Path, fps: Optional[float] = None) -> Path:
    """Figure-4-style timeline: per-frame IoU of every method, updates of each online run."""
    from evaluation.report import plot_timeline, updates_per_interval

    n = report["frames"]
    interval = max(1, n // 30)
    ious = {r["method"]: [np.nan if v is None else v for v in r["per_frame_iou"]] for r in report["runs"]}
    updates = {r["method"]: updates_per_interval(r["update_frames"], n, interval)
               for r in report["runs"] if r["kind"] == "online"}
    if not updates:
        updates = {"updates": [0] * math.ceil(n / interval)}
    return plot_timeline(ious, updates, path, interval=interval, fps=fps, smooth=max(1, min(15, n // 20)),
                         title=f"{Path(report['video']).name}: mean IoU vs the teacher, and online updates")


def write_overlay_video(path: Path, frames: Sequence[np.ndarray], teacher_labels: Sequence[np.ndarray],
                        student_labels: Sequence[np.ndarray], groups: Sequence[str], *, fps: float,
                        titles: Sequence[str]) -> Path:
    """teacher | student side by side, one output frame per input frame."""
    import cv2

    from sdk.overlay import OverlayWriter, overlay, side_by_side

    def titled(image: np.ndarray, title: str) -> np.ndarray:
        # Drawn inside the panel so both panels keep the frame's height.
        scale = max(0.4, min(1.0, image.shape[0] / 600))
        (tw, th), base = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y0 = image.shape[0] - th - base - 8
        image[y0:] = (image[y0:] * 0.35).astype(np.uint8)
        cv2.putText(image, title, (6, image.shape[0] - base - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
        return image

    with OverlayWriter(path, fps=fps) as writer:
        for frame, t, s in zip(frames, teacher_labels, student_labels):
            left = titled(overlay(frame, t, class_names=list(groups)), titles[0])
            right = titled(overlay(frame, s), titles[1])
            writer.write(side_by_side(left, right))
    return Path(path)
