"""Optical-flow label propagation: the paper's "Flow" baselines.

The teacher labels a keyframe every ``keyframe_interval`` frames; the frames
in between get the keyframe's labels carried along by dense optical flow,
chained frame to frame.  Each step computes the flow from the new frame back
to the previous one (on grayscale) and samples the previous label map there
(backward warping with nearest-neighbour lookup, so label ids are never
blended into ids that do not exist).

Methods (all OpenCV, CPU):

- ``dis_medium``: DIS optical flow, MEDIUM preset -- the accurate one, used for
  Flow (slow) with a keyframe every 8 frames.
- ``dis_fast`` / ``dis_ultrafast``: DIS FAST / ULTRAFAST presets; ULTRAFAST is
  used for Flow (fast) with a keyframe every 16 frames.  On DAVIS frames
  (854x480, 2 CPU cores) ULTRAFAST is ~10x cheaper than MEDIUM and propagates
  about as well as FAST.
- ``farneback``: Farneback's polynomial-expansion flow with OpenCV's sample
  settings; slower than DIS MEDIUM, kept for comparison.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

_DIS_PRESETS = {
    "dis_medium": "DISOPTICAL_FLOW_PRESET_MEDIUM",
    "dis_fast": "DISOPTICAL_FLOW_PRESET_FAST",
    "dis_ultrafast": "DISOPTICAL_FLOW_PRESET_ULTRAFAST",
}
FLOW_METHODS = (*_DIS_PRESETS, "farneback")

#: The two baselines of the paper's Table 2, as run here.
SLOW_METHOD, SLOW_INTERVAL = "dis_medium", 8
FAST_METHOD, FAST_INTERVAL = "dis_ultrafast", 16

#: (frame index, RGB frame) -> teacher label map (uint8, H x W).
TeacherFn = Callable[[int, np.ndarray], np.ndarray]


def to_gray(frame: np.ndarray) -> np.ndarray:
    """Grayscale uint8 of an RGB frame (or the frame itself if already 2-D)."""
    if frame.ndim == 2:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3) or a gray one (H, W), got shape {frame.shape}")
    return cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


class FlowPropagator:
    """Carries a label map from a keyframe to the following frames by dense optical flow.

    Use ``reset(keyframe, labels)`` at each keyframe and ``step(frame)`` for
    every later frame, in order.  ``scale`` < 1 computes the flow on a
    downscaled frame (cheaper on large video) and upsamples it.
    ``seconds`` accumulates the time spent in flow and warping, which is what
    the baseline costs on top of the teacher.
    """

    def __init__(self, method: str = SLOW_METHOD, *, scale: float = 1.0):
        if method not in FLOW_METHODS:
            raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.method = method
        self.scale = float(scale)
        self._dis = (
            cv2.DISOpticalFlow_create(getattr(cv2, _DIS_PRESETS[method])) if method in _DIS_PRESETS else None
        )
        self._grid: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._prev_gray: Optional[np.ndarray] = None
        self._labels: Optional[np.ndarray] = None
        self.seconds = 0.0
        self.steps = 0

    def flow(self, target_gray: np.ndarray, source_gray: np.ndarray) -> np.ndarray:
        """(H, W, 2) float32: for each target pixel, the (dx, dy) to its position in the source."""
        if target_gray.shape != source_gray.shape:
            raise ValueError(f"frames differ in size: {target_gray.shape} vs {source_gray.shape}")
        h, w = target_gray.shape
        a, b = target_gray, source_gray
        if self.scale < 1:
            size = (max(8, round(w * self.scale)), max(8, round(h * self.scale)))
            a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
            b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        if self._dis is not None:
            flow = self._dis.calc(a, b, None)
        else:
            flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        if self.scale < 1:
            fx, fy = w / a.shape[1], h / a.shape[0]
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
            flow[..., 0] *= fx
            flow[..., 1] *= fy
        return flow

    def warp(self, labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """Backward warp: ``out[y, x] = labels[y + dy, x + dx]``, nearest neighbour, edges replicated."""
        h, w = labels.shape[:2]
        if self._grid is None or self._grid[0].shape != (h, w):
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid = (gx, gy)
        gx, gy = self._grid
        return cv2.remap(
            labels, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
        )

    def reset(self, keyframe: np.ndarray, labels: np.ndarray) -> None:
        """Start carrying ``labels`` from ``keyframe``."""
        gray = to_gray(keyframe)
        if labels.shape != gray.shape:
            raise ValueError(f"labels {labels.shape} do not match the keyframe {gray.shape}")
        self._prev_gray = gray
        self._labels = np.ascontiguousarray(labels, dtype=np.uint8)

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Labels for the next frame, carried from the previous one."""
        if self._labels is None or self._prev_gray is None:
            raise RuntimeError("call reset(keyframe, labels) before step(frame)")
        t0 = time.perf_counter()
        gray = to_gray(frame)
        self._labels = self.warp(self._labels, self.flow(gray, self._prev_gray))
        self._prev_gray = gray
        self.seconds += time.perf_counter() - t0
        self.steps += 1
        return self._labels

    def propagate(self, frames: Sequence[np.ndarray], labels: np.ndarray) -> list[np.ndarray]:
        """Labels for ``frames[1:]``, carried from ``labels`` of ``frames[0]``."""
        self.reset(frames[0], labels)
        return [self.step(f) for f in frames[1:]]


@dataclass
class FlowBaselineStats:
    """What a flow baseline cost: teacher calls and where the time went."""

    method: str
    keyframe_interval: int
    frames: int = 0
    teacher_frames: list[int] = field(default_factory=list)
    teacher_seconds: float = 0.0
    flow_seconds: float = 0.0

    @property
    def teacher_calls(self) -> int:
        return len(self.teacher_frames)

    @property
    def flow_ms_per_frame(self) -> float:
        """Flow + warp time per propagated (non-key) frame."""
        propagated = self.frames - self.teacher_calls
        return 1000.0 * self.flow_seconds / propagated if propagated else 0.0


def iter_flow_baseline(
    frames: Iterable[np.ndarray],
    teacher_labels_fn: TeacherFn,
    keyframe_interval: int,
    method: str = SLOW_METHOD,
    *,
    scale: float = 1.0,
    stats: Optional[FlowBaselineStats] = None,
) -> Iterator[np.ndarray]:
    """Yield one label map per frame, streaming, so long videos need not fit in memory.

    Frame i is a keyframe (labelled by ``teacher_labels_fn(i, frame)``) when
    ``i % keyframe_interval == 0``; others get the last keyframe's labels by
    flow.  Pass ``stats`` to read the costs as they accumulate.  Yielded
    arrays must not be modified in place by the caller (the propagator reads
    them back on the next frame); copy them if needed.
    """
    if keyframe_interval < 1:
        raise ValueError(f"keyframe_interval must be >= 1, got {keyframe_interval}")
    stats = stats if stats is not None else FlowBaselineStats(method, keyframe_interval)
    prop = FlowPropagator(method, scale=scale)
    for i, frame in enumerate(frames):
        if i % keyframe_interval == 0:
            t0 = time.perf_counter()
            labels = np.asarray(teacher_labels_fn(i, frame), dtype=np.uint8)
            stats.teacher_seconds += time.perf_counter() - t0
            stats.teacher_frames.append(i)
            prop.reset(frame, labels)
            out = labels
        else:
            before = prop.seconds
            out = prop.step(frame)
            stats.flow_seconds += prop.seconds - before
        stats.frames += 1
        yield out
