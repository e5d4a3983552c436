"""The last teacher answer, carried to the current frame by optical flow, and fused with the student.

Flow is near-perfect for a few frames and drifts over long horizons, at cuts,
occlusions and new objects; the specialised student does not drift but is
less exact than a fresh teacher answer (the paper's conclusion: the two are
complementary).  So every frame's output takes the carried answer where it is
still trustworthy and the student everywhere else:

- the answer is carried frame to frame by DIS optical flow (OpenCV, ULTRAFAST,
  grayscale, at the student's input resolution), backward-warped with
  nearest-neighbour lookup so label ids are never blended;
- a pixel of the carried answer stays *valid* only while every step that
  carried it was photometrically consistent (the previous frame, warped by
  the flow, matches the new one there) and landed inside the previous frame:
  occlusions, disocclusions and entering objects fall back to the student;
- a step whose residual is large over most of the frame is a scene cut (or a
  flow failure): the carried answer is dropped at once, so stale labels are
  never painted over a new scene;
- past ``max_age`` frames the carried answer is dropped (the student alone).

Live mode: the answer for frame k arrives at frame k+d.  The carrier keeps a
bounded chain of the last ``max_age`` flow steps (flows and step-validity
masks, never frames), so the late answer is replayed through the steps the
agent already computed and lands on the right pixels of frame k+d.

The carrier is also what tells the stride controller that the scene changed
(``Observation``: how well the student agrees with the carried answer; ``advance``
says whether a cut happened).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from core.metrics import class_ious

#: Gray levels (0..255) of photometric residual above which one flow step is not trusted at a pixel.
#: DIS ULTRAFAST on real video leaves 2-8 levels of residual on well-tracked texture; 30 is a mismatch.
RESIDUAL_LEVELS = 30.0
#: A step with more than this fraction of its pixels over the residual is a cut or a flow failure.
CUT_FRACTION = 0.5
#: Below this mean IoU between the student and the carried answer on the pixels where the answer is
#: still consistent, the student is not trusted on this frame at all: the carried answer is the output
#: everywhere (the stride controller hears of the disagreement too).
TRUST_AGREEMENT = 0.5
#: Where the carried answer failed, the student may bring in a class the carried answer lacks only when
#: it predicts at least this share of the frame as that class: a new object, not a stray blob (a stray
#: blob of a class nobody else sees costs a whole class's IoU in the frame's mean).
NEW_CLASS_MIN_FRACTION = 0.002
#: Flow is computed at most at this size (longest side, pixels): beyond it DIS costs more than it gains.
MAX_FLOW_SIDE = 512


@dataclass(frozen=True)
class Observation:
    """What the carrier saw on one frame, for the output and for the stride controller."""

    #: Frames since the teacher frame of the carried answer (None: nothing carried).
    age: Optional[int]
    #: Share of the frame's pixels whose output came from the carried answer.
    carried_fraction: float
    #: Mean IoU (foreground classes) of the student against the carried answer on valid pixels;
    #: None when neither has foreground there or nothing is carried.
    agreement: Optional[float]


@dataclass
class _Step:
    """One frame-to-frame flow step, kept for late answers: the flow (float16) and where it was consistent."""

    source: int  # the previous processed frame
    index: int  # the frame this step leads into
    flow: np.ndarray  # float16 (h, w, 2): for each pixel of frame ``index``, its offset in frame ``source``
    valid: np.ndarray  # bool (h, w)
    cut: bool


class FlowCarrier:
    """Carries the last teacher answer along the stream and fuses it with the student's prediction."""

    def __init__(self, num_classes: int, *, max_age: int, residual_levels: float = RESIDUAL_LEVELS,
                 cut_fraction: float = CUT_FRACTION) -> None:
        if max_age < 1:
            raise ValueError(f"max_age must be >= 1, got {max_age}")
        self.num_classes = int(num_classes)
        self.max_age = int(max_age)
        self.residual_levels = float(residual_levels)
        self.cut_fraction = float(cut_fraction)
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._chain: deque[_Step] = deque(maxlen=self.max_age)
        self._grid: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._prev_gray: Optional[np.ndarray] = None
        self._prev_index: Optional[int] = None
        self._hw: Optional[tuple[int, int]] = None  # the student's grid (unpadded) this carrier works on
        self._labels: Optional[np.ndarray] = None  # carried answer at flow resolution
        self._valid: Optional[np.ndarray] = None
        self._teacher_index: Optional[int] = None
        self.flow_ms = 0.0  # time of the last step (flow + warps)

    # -- state ----------------------------------------------------------------
    @property
    def chain_length(self) -> int:
        """Flow steps kept for late answers (bounded by ``max_age``)."""
        return len(self._chain)

    @property
    def teacher_index(self) -> Optional[int]:
        return self._teacher_index

    def reset(self) -> None:
        """Forget everything (a new stream, or a change of frame size)."""
        self._chain.clear()
        self._prev_gray = self._prev_index = self._hw = None
        self._drop()

    def _drop(self) -> None:
        self._labels = self._valid = self._teacher_index = None

    # -- per frame --------------------------------------------------------------
    def advance(self, index: int, image: np.ndarray) -> bool:
        """Compute the flow step from the previous frame into frame ``index`` and carry the answer along.

        ``image``: the student's input, RGB uint8, cropped to the unpadded grid.
        Returns True when the step was a scene cut (the carried answer, if
        any, is dropped).
        """
        t0 = time.perf_counter()
        hw = image.shape[:2]
        if self._hw != hw:  # a new size is a new scene
            self.reset()
            self._hw = hw
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        small = self._flow_size(gray)
        cut = False
        if self._prev_gray is not None and self._prev_index is not None and index > self._prev_index:
            step, maps = self._step(self._prev_index, index, small, self._prev_gray)
            self._chain.append(step)
            cut = step.cut
            if self._labels is not None:
                self._carry(step, maps)
        elif self._prev_index is not None and index <= self._prev_index:
            self.reset()  # the stream went back (replayed or restarted): nothing carries over
            self._hw = hw
        self._prev_gray, self._prev_index = small, index
        if self._labels is not None and self._teacher_index is not None and index - self._teacher_index > self.max_age:
            self._drop()
        self.flow_ms = (time.perf_counter() - t0) * 1e3
        return cut

    def set_answer(self, teacher_index: int, labels: np.ndarray) -> bool:
        """Start carrying ``labels`` (the student's grid, unpadded) of teacher frame ``teacher_index``.

        A late answer is replayed through the chain of steps since its frame.
        Returns False (and carries nothing) when the chain no longer reaches
        back to that frame, or a cut lies between it and now.
        """
        if self._hw is None or labels.shape != self._hw:
            self._drop()
            return False
        current = self._prev_index
        if current is None or teacher_index > current:
            self._drop()
            return False
        # Frames dropped between processed frames are fine (steps join processed frames);
        # what must hold is that the chain still starts at the teacher frame.
        steps = [s for s in self._chain if s.index > teacher_index]
        if current - teacher_index > self.max_age or (steps and steps[0].source != teacher_index):
            self._drop()
            return False
        self._labels = self._to_flow_size(np.ascontiguousarray(labels, dtype=np.uint8), cv2.INTER_NEAREST)
        self._valid = np.ones(self._labels.shape, bool)
        self._teacher_index = teacher_index
        for step in steps:
            if step.cut:
                self._drop()
                return False
            self._carry(step, self._maps(step.flow.astype(np.float32)))
        return True

    def fuse(self, index: int, prediction: np.ndarray) -> tuple[np.ndarray, Observation]:
        """The output for frame ``index``: the carried answer where valid, the student elsewhere.

        ``prediction``: the student's label map on the unpadded grid.  Returns
        a new array; ``prediction`` is not modified.
        """
        age = None if self._teacher_index is None else index - self._teacher_index
        if self._labels is None or age is None or age > self.max_age:
            return prediction, Observation(None, 0.0, None)
        carried, valid = self._to_grid(self._labels, cv2.INTER_NEAREST), self._to_grid(
            self._valid.view(np.uint8), cv2.INTER_NEAREST).view(bool)
        agreement = None
        if age > 0 and valid.any():
            ious = class_ious(prediction[valid], carried[valid], self.num_classes)[1:]
            present = ious[~np.isnan(ious)]
            agreement = float(present.mean()) if present.size else None
        if agreement is not None and agreement < TRUST_AGREEMENT:
            # The student disagrees with the answer where that answer is still good: it is not
            # to be trusted where the answer failed either (flow's edge replication is the better guess).
            return carried.copy(), Observation(age, 1.0, agreement)
        k = self.num_classes
        in_carried = np.bincount(carried.ravel(), minlength=k)[:k] > 0
        student_px = np.bincount(prediction.ravel(), minlength=k)[:k]
        stray = ~in_carried & (student_px < NEW_CLASS_MIN_FRACTION * prediction.size)
        stray[0] = False
        keep_carried = valid | stray[prediction] if stray.any() else valid
        out = np.where(keep_carried, carried, prediction)
        return out, Observation(age, float(keep_carried.mean()), agreement)

    # -- internals ----------------------------------------------------------------
    def _flow_size(self, gray: np.ndarray) -> np.ndarray:
        h, w = gray.shape
        side = max(h, w)
        if side <= MAX_FLOW_SIDE:
            return gray
        f = MAX_FLOW_SIDE / side
        return cv2.resize(gray, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)

    def _to_flow_size(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        target = self._prev_gray.shape if self._prev_gray is not None else array.shape
        if array.shape[:2] == target:
            return array
        return cv2.resize(array, target[::-1], interpolation=interpolation)

    def _to_grid(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        if self._hw is None or array.shape[:2] == self._hw:
            return array
        return cv2.resize(array, self._hw[::-1], interpolation=interpolation)

    def _maps(self, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = flow.shape[:2]
        if self._grid is None or self._grid[0].shape != (h, w):
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid = (gx, gy)
        return self._grid[0] + flow[..., 0], self._grid[1] + flow[..., 1]

    def _step(self, source: int, index: int, gray: np.ndarray,
              prev_gray: np.ndarray) -> tuple[_Step, tuple[np.ndarray, np.ndarray]]:
        flow = self._dis.calc(gray, prev_gray, None)  # for each pixel of the new frame: where it was before
        h, w = gray.shape
        map_x, map_y = self._maps(flow)
        warped = cv2.remap(prev_gray, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        residual = cv2.absdiff(gray, warped)
        # A 3x3 mean ignores single-pixel noise and aliasing at edges, not real mismatches.
        residual = cv2.blur(residual, (3, 3))
        consistent = residual <= self.residual_levels
        inside = (map_x >= -0.5) & (map_x <= w - 0.5) & (map_y >= -0.5) & (map_y <= h - 0.5)
        cut = float(1.0 - consistent.mean()) > self.cut_fraction
        return _Step(source, index, flow.astype(np.float16), consistent & inside, cut), (map_x, map_y)

    def _carry(self, step: _Step, maps: tuple[np.ndarray, np.ndarray]) -> None:
        if step.cut:
            self._drop()
            return
        map_x, map_y = maps
        labels = cv2.remap(self._labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        valid = cv2.remap(self._valid.view(np.uint8), map_x, map_y, cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
        self._labels, self._valid = labels, valid & step.valid
