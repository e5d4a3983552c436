"""Every method of the stream evaluation, run on the same frames against the same teacher labels.

- ``run_agent``: the online student (DistillationAgent in replay mode) with
  the back-off controller, a fixed stride, or the teacher on frame 0 only
  (No adaptation); the same agent code the product runs.
- ``run_offline_oracle``: the same JITNet trained offline on every 5th
  frame's teacher labels of the same video, then run with no updates.
- ``run_flow``: teacher on keyframes, dense optical flow in between.

Each returns a ``MethodRun``: per-frame accuracy against the teacher plus the
counts and measured milliseconds the cost model needs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from core.config import DistillConfig
from core.metrics import class_ious

log = logging.getLogger(__name__)


class Scorer:
    """Per-frame accuracy against the teacher, the paper's way.

    A frame's mean IoU averages the classes present in the prediction or the
    teacher's labels, background excluded; frames where neither has any
    class are not scored (NaN).  A class's IoU is averaged over the frames
    where it is present.
    """

    def __init__(self, groups: Sequence[str]):
        self.groups = list(groups)
        self.frame_iou: list[float] = []
        self._class: list[np.ndarray] = []

    def add(self, prediction: np.ndarray, reference: np.ndarray) -> float:
        ious = class_ious(prediction, reference, len(self.groups) + 1)[1:]
        present = ious[~np.isnan(ious)]
        value = float(present.mean()) if present.size else float("nan")
        self.frame_iou.append(value)
        self._class.append(ious)
        return value

    @property
    def mean_iou(self) -> float:
        v = np.asarray(self.frame_iou, dtype=np.float64)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    @property
    def iou_per_group(self) -> dict[str, Optional[float]]:
        if not self._class:
            return {g: None for g in self.groups}
        table = np.stack(self._class)
        out: dict[str, Optional[float]] = {}
        for k, g in enumerate(self.groups):
            col = table[:, k]
            out[g] = float(np.nanmean(col)) if np.isfinite(col).any() else None
        return out


@dataclass
class MethodRun:
    """One method over one clip: accuracy, teacher use, updates and measured costs."""

    method: str
    kind: str
    frames: int
    teacher_frames: int
    updates: int
    scorer: Scorer = field(repr=False)
    #: Frame index of every training update (repeated for several updates on one frame).
    update_frames: list[int] = field(default_factory=list, repr=False)
    teacher_indices: list[int] = field(default_factory=list, repr=False)
    infer_ms: float = float("nan")
    train_step_ms: float = float("nan")
    flow_ms: float = float("nan")
    wall_s: float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    labels: Optional[list[np.ndarray]] = field(default=None, repr=False)

    @property
    def mean_iou(self) -> float:
        return self.scorer.mean_iou

    @property
    def teacher_fraction(self) -> float:
        return self.teacher_frames / self.frames if self.frames else 0.0

    @property
    def mean_stride(self) -> Optional[float]:
        """Frames per teacher frame over the clip (the stride a fixed schedule would need)."""
        return self.frames / self.teacher_frames if self.teacher_frames else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "frames": self.frames,
            "mean_iou": self.mean_iou,
            "iou_per_group": self.scorer.iou_per_group,
            "teacher_frames": self.teacher_frames,
            "teacher_fraction": self.teacher_fraction,
            "updates": self.updates,
            "mean_stride": self.mean_stride,
            "infer_ms": self.infer_ms,
            "train_step_ms": self.train_step_ms,
            "flow_ms": self.flow_ms,
            "wall_s": self.wall_s,
            "teacher_indices": self.teacher_indices,
            "update_frames": self.update_frames,
            "per_frame_iou": [None if np.isnan(v) else round(v, 4) for v in self.scorer.frame_iou],
            "notes": self.notes,
            **self.extra,
        }


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def run_agent(
    method: str,
    kind: str,
    frames: Sequence[np.ndarray],
    teacher_labels: Sequence[np.ndarray],
    groups: Sequence[str],
    artifacts: Path,
    config: DistillConfig,
    *,
    controller: Any = None,
    keep_labels: bool = False,
    backend: str = "ort",
) -> MethodRun:
    """The online student over the clip in replay mode, from a fresh copy of ``artifacts``."""
    from edge_agent.agent import DistillationAgent
    from edge_agent.trainer import load_trainer
    from evaluation.teacher_labels import CachedTeacher

    trainer = load_trainer(artifacts, backend=backend)
    teacher = CachedTeacher(teacher_labels, groups)
    agent = DistillationAgent(trainer, teacher, config, controller=controller)
    scorer = Scorer(groups)
    infer, flow, train_ms, update_frames, kept, carried = [], [], 0.0, [], [], []
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        r = agent.process(i, frame)
        infer.append(r.timings["infer_ms"])
        flow.append(r.timings.get("flow_ms", 0.0) + r.timings.get("fusion_ms", 0.0))
        carried.append(r.carried_fraction)
        train_ms += r.timings["train_ms"]
        update_frames += [i] * r.updates
        scorer.add(r.labels, teacher_labels[i])
        if keep_labels:
            kept.append(r.labels)
    wall = time.perf_counter() - start
    decisions, updates = agent.controller.history, agent.counters.updates
    run = MethodRun(
        method, kind, len(frames), teacher.calls, updates, scorer, update_frames, list(teacher.asked),
        infer_ms=_median(infer), train_step_ms=train_ms / updates if updates else float("nan"),
        flow_ms=_median(flow) if agent.carrier is not None else float("nan"),
        wall_s=wall, labels=kept if keep_labels else None,
    )
    run.extra = {
        "fusion": config.fusion,
        "stride_signal": config.signal,
        "carried_fraction": float(np.mean(carried)) if carried else 0.0,
        "change_triggers": getattr(agent.controller, "change_triggers", 0),
        "cut_triggers": getattr(agent.controller, "cut_triggers", 0),
        "threshold": config.accuracy_threshold,
        "max_updates": config.max_updates,
        "strides": [d.stride_after for d in decisions],
        "success_rate": agent.controller.summary()["success_rate"],
    }
    log.info("%s: mean IoU %.3f, teacher %d/%d frames, %d updates, %.1f s", method, run.mean_iou,
             run.teacher_frames, run.frames, run.updates, wall)
    return run


def _weights_for(label_map: np.ndarray, config: DistillConfig) -> np.ndarray:
    from core.targets import box_weights
    from evaluation.teacher_labels import boxes_from_labels

    boxes = [b for b, _ in boxes_from_labels(label_map)]
    return box_weights(label_map.shape, boxes, weight=config.box_weight, dilation=config.box_dilation)


def run_offline_oracle(
    frames: Sequence[np.ndarray],
    teacher_labels: Sequence[np.ndarray],
    groups: Sequence[str],
    artifacts: Path,
    config: DistillConfig,
    *,
    every: int = 5,
    epochs: int = 5,
    seed: int = 0,
    keep_labels: bool = False,
    backend: str = "ort",
) -> MethodRun:
    """JITNet trained offline on every ``every``-th frame's teacher labels, then run with no updates.

    The paper's oracle sees the future of the very video it is scored on; it
    bounds what a student of this size can reach on this clip.  Offline
    training is not charged in the speedup (it is not a deployable method).
    """
    from core.geometry import Geometry
    from edge_agent.trainer import load_trainer

    if every < 1 or epochs < 1:
        raise ValueError("every and epochs must be >= 1")
    trainer = load_trainer(artifacts, backend=backend)
    geo = Geometry.for_frame(frames[0].shape[:2], config.input_scale)
    train_idx = list(range(0, len(frames), every))
    data = [(geo.image(frames[i]), geo.labels(teacher_labels[i]), geo.weights(_weights_for(teacher_labels[i], config)))
            for i in train_idx]
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    step_ms = []
    for _ in range(epochs):
        for j in rng.permutation(len(data)):
            t0 = time.perf_counter()
            trainer.train_step(*data[j])
            step_ms.append((time.perf_counter() - t0) * 1e3)
    train_s = time.perf_counter() - start
    scorer, infer, kept = Scorer(groups), [], []
    for i, frame in enumerate(frames):
        image = geo.image(frame)
        t0 = time.perf_counter()
        pred = trainer.predict(image)
        infer.append((time.perf_counter() - t0) * 1e3)
        labels = geo.to_frame(pred)
        scorer.add(labels, teacher_labels[i])
        if keep_labels:
            kept.append(labels)
    run = MethodRun(
        "Offline oracle", "oracle", len(frames), len(train_idx), len(step_ms), scorer, [], list(train_idx),
        infer_ms=_median(infer),
        train_step_ms=_median(step_ms), wall_s=time.perf_counter() - start,
        notes=f"trained offline on {len(train_idx)} teacher frames (every {every}th) for {epochs} epochs "
              f"({len(step_ms)} steps, {train_s:.0f} s), then no updates; offline training is not charged",
        labels=kept if keep_labels else None,
    )
    # teacher_frames / updates count the offline labels and steps; the speedup charges inference only.
    run.extra = {"offline_teacher_frames": len(train_idx), "offline_steps": len(step_ms), "offline_train_s": train_s}
    log.info("offline oracle: mean IoU %.3f after %d steps", run.mean_iou, len(step_ms))
    return run


def run_flow(
    method: str,
    frames: Sequence[np.ndarray],
    teacher_labels: Sequence[np.ndarray],
    groups: Sequence[str],
    *,
    flow_method: str,
    interval: int,
    keep_labels: bool = False,
) -> MethodRun:
    """Teacher every ``interval`` frames, labels carried by ``flow_method`` optical flow in between."""
    from evaluation.flow import iter_flow_baseline, FlowBaselineStats

    stats = FlowBaselineStats(flow_method, interval)
    scorer, kept = Scorer(groups), []
    start = time.perf_counter()
    for i, labels in enumerate(iter_flow_baseline(frames, lambda k, _f: teacher_labels[k], interval, flow_method,
                                                   stats=stats)):
        scorer.add(labels, teacher_labels[i])
        if keep_labels:
            kept.append(labels.copy())
    run = MethodRun(
        method, "flow", len(frames), stats.teacher_calls, 0, scorer, [], list(stats.teacher_frames),
        flow_ms=stats.flow_ms_per_frame, wall_s=time.perf_counter() - start,
        notes=f"OpenCV {flow_method} flow, teacher every {interval} frames",
        labels=kept if keep_labels else None,
    )
    run.extra = {"flow_method": flow_method, "keyframe_interval": interval}
    return run
