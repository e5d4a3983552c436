"""The DAVIS 2016 protocol of the paper's supplement, on real human ground truth.

Each sequence starts from the same student (one foreground class, "object").
The human mask plays the teacher: on a frame that has it, the student trains
until its IoU against the mask reaches the threshold (0.95 in the paper) or
the update budget is spent, with pixel weights from the mask's bounding box
(``box_weights``, as for teacher boxes) and, optionally, the supplement's
augmentation (:mod:`export.augment`).

- Configuration A: the first frame's mask only, then segment the rest.
- Configuration C: the first frame and every 16th frame's mask.

Predictions are scored with the benchmark's J and F (first and last frames
left out, as in the semi-supervised protocol).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from core.config import DistillConfig
from export.augment import frame_view

log = logging.getLogger(__name__)

CLASSES = ("object",)
CONFIGS = {"A": None, "C": 16}


@dataclass
class DavisOptions:
    """Protocol knobs; the paper's values are 0.95 and up to 500 updates (on a GPU)."""

    config: str = "A"
    threshold: float = 0.95
    max_updates: int = 500
    #: Frames are scaled by this before the student sees them (the paper: full 854x480).
    scale: float = 0.5
    augment: bool = True
    #: Score only the first N frames of each sequence (None = all; for quick checks).
    max_frames: Optional[int] = None
    sequences: Optional[Sequence[str]] = None
    backend: str = "ort"
    seed: int = 0
    box_weight: float = DistillConfig.box_weight
    box_dilation: float = DistillConfig.box_dilation

    def __post_init__(self) -> None:
        if self.config not in CONFIGS:
            raise ValueError(f"config must be one of {', '.join(CONFIGS)}, got {self.config!r}")
        if not 0 < self.threshold <= 1 or self.max_updates < 1:
            raise ValueError("threshold must be in (0, 1] and max_updates >= 1")
        if self.max_frames is not None and self.max_frames < 3:
            raise ValueError("max_frames must be >= 3 (the first and last frames are not scored)")

    @property
    def gt_every(self) -> Optional[int]:
        return CONFIGS[self.config]


def mask_box(mask: np.ndarray) -> Optional[tuple[float, float, float, float]]:
    """Bounding box (x0, y0, x1, y1) of a mask, None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def adapt(trainer: Any, image: np.ndarray, target: np.ndarray, weights: np.ndarray, valid: tuple[int, int],
          *, threshold: float, max_updates: int, rng: Optional[np.random.Generator] = None) -> tuple[int, float, float]:
    """Train on one annotated frame until IoU >= threshold or ``max_updates``; (updates, IoU before, after).

    With ``rng``, every other step sees an augmented copy (the supplement's
    augmentation, :func:`export.augment.frame_view`); the IoU is always
    checked on the frame itself. When to stop is Algorithm 1's inner-loop rule,
    asked of the stride controller that owns it (one rule, one place).
    """
    from core.config import DistillConfig
    from core.metrics import mean_iou
    from edge_agent.stride import FixedStride

    rule = FixedStride(1, DistillConfig(accuracy_threshold=threshold, max_updates=max_updates))
    h, w = valid

    def iou() -> float:
        return mean_iou(trainer.predict(image)[:h, :w], target[:h, :w], 2)

    before = acc = iou()
    updates = 0
    while rule.should_update(updates, acc):
        if rng is not None and updates % 2 == 1:
            trainer.train_step(*frame_view(image, target, weights, rng))
        else:
            trainer.train_step(image, target, weights)
        updates += 1
        acc = iou()
    return updates, before, acc


def evaluate_davis_sequence(root: Path, name: str, artifacts: Path, options: DavisOptions) -> dict[str, Any]:
    """One sequence under configuration A or C: predictions, J/F statistics and what it cost."""
    from core.geometry import Geometry
    from edge_agent.trainer import load_trainer
    from core.targets import box_weights
    from evaluation.davis_data import load_sequence
    from evaluation.davis_metrics import evaluate_sequence

    seq = load_sequence(root, name, lazy=True)
    n = len(seq.masks) if options.max_frames is None else min(len(seq.masks), options.max_frames)
    masks = seq.masks[:n]
    trainer = load_trainer(artifacts, backend=options.backend)
    rng = np.random.default_rng(options.seed) if options.augment else None
    geo = None
    preds, adaptations = [], []
    start = time.perf_counter()
    train_s = 0.0
    for i in range(n):
        frame = seq.frames[i]
        if geo is None:
            geo = Geometry.for_frame(frame.shape[:2], options.scale)
        image = geo.image(frame)
        annotated = i == 0 or (options.gt_every is not None and i % options.gt_every == 0)
        if annotated:
            mask = masks[i]
            box = mask_box(mask)
            weights = box_weights(mask.shape, [box] if box else [], weight=options.box_weight,
                                  dilation=options.box_dilation)
            t0 = time.perf_counter()
            updates, before, after = adapt(trainer, image, geo.labels(mask.astype(np.uint8)), geo.weights(weights),
                                           geo.scaled_hw, threshold=options.threshold,
                                           max_updates=options.max_updates, rng=rng)
            train_s += time.perf_counter() - t0
            adaptations.append({"frame": i, "updates": updates, "iou_before": before, "iou_after": after})
        preds.append(geo.to_frame(trainer.predict(image)) > 0)
    scores = evaluate_sequence(masks, preds)
    out: dict[str, Any] = {}
    for m in ("J", "F"):
        for s in ("mean", "recall", "decay"):
            out[f"{m}_{s}"] = scores[m][s]
    out.update({
        "frames": n,
        "annotated_frames": [a["frame"] for a in adaptations],
        "updates": sum(a["updates"] for a in adaptations),
        "adaptations": adaptations,
        "train_seconds": train_s,
        "seconds": time.perf_counter() - start,
        "J_frames": scores["J_frames"],
        "F_frames": scores["F_frames"],
    })
    log.info("%s (config %s): J %.3f F %.3f, %d updates, %.0f s", name, options.config, out["J_mean"],
             out["F_mean"], out["updates"], out["seconds"])
    return out


def evaluate_davis(root: Path, artifacts: Path, options: DavisOptions) -> dict[str, Any]:
    """Every sequence (or the chosen ones) of a DAVIS-layout folder; per sequence and mean J/F."""
    from evaluation.davis_data import list_sequences

    available = list_sequences(root)
    names = list(options.sequences) if options.sequences else available
    missing = [s for s in names if s not in available]
    if missing:
        raise ValueError(f"sequences {missing} not under {root}; available: {', '.join(available)}")
    results = {name: evaluate_davis_sequence(root, name, artifacts, options) for name in names}
    report: dict[str, Any] = {"config": options.config, "sequences": results}
    for key in ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay"):
        vals = [r[key] for r in results.values() if r[key] is not None and not math.isnan(r[key])]
        report[key] = float(np.mean(vals)) if vals else None
    report["protocol"] = {
        "config": options.config,
        "annotated": "first frame" if options.gt_every is None else f"first frame + every {options.gt_every}th",
        "threshold": options.threshold,
        "max_updates": options.max_updates,
        "scale": options.scale,
        "augment": options.augment,
        "max_frames": options.max_frames,
        "scored": "frames 1..n-2 (first and last left out)",
    }
    return report


def davis_markdown(report: dict[str, Any], command: Optional[str] = None) -> str:
    """The paper's supplement layout: J and F (mean, recall, decay) per sequence, mean, paper row."""
    from evaluation.report import davis_table

    per_seq = {name: {m: {s: r[f"{m}_{s}"] for s in ("mean", "recall", "decay")} for m in ("J", "F")}
               for name, r in report["sequences"].items()}
    p, s = report["protocol"], report.get("student", {})
    start = ("pre-trained checkpoint " + str(s.get("init"))) if s.get("from_init") else (
        "given artifacts" if s.get("how") == "--artifacts" else "random init")
    lines = [
        f"Student: width {s.get('width', '?')} JITNet ({start}; manifest `{s.get('manifest', '?')}`).",
        f"Annotated frames: {p['annotated']}; train to IoU {p['threshold']:g} or {p['max_updates']} updates per "
        f"annotated frame; frames at scale {p['scale']:g}; augmentation {'on' if p['augment'] else 'off'}.",
    ]
    if command:
        lines.append(f"\nCommand: `{command}`")
    return "\n".join(lines) + "\n\n" + davis_table(per_seq, report["config"])


def write_davis_plot(report: dict[str, Any], path: Path) -> Path:
    """Per-frame J of each sequence (top) and updates per 16 frames (bottom)."""
    from evaluation.report import plot_timeline, updates_per_interval

    ious = {name: [np.nan] + list(r["J_frames"]) for name, r in report["sequences"].items()}
    updates = {}
    for name, r in report["sequences"].items():
        frames = [a["frame"] for a in r["adaptations"] for _ in range(a["updates"])]
        updates[name] = updates_per_interval(frames, r["frames"], 16)
    return plot_timeline(ious, updates, path, interval=16, title=f"DAVIS 2016, configuration {report['config']}: J per frame")
