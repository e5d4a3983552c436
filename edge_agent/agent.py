"""The online distillation loop: segment every frame, learn from the teacher now and then.

One object, two modes.  Replay (evaluation): the teacher is waited for and
training on a teacher frame completes before the next frame, so a run is
deterministic.  Live: the teacher request is in flight while the student keeps
segmenting; when the labels arrive the student trains on the frame they belong
to, one step per processed frame, so no frame waits for more than one step.
The student never waits on the network in live mode, and a dead teacher never
stops segmentation in either mode.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from core.config import DistillConfig
from edge_agent.stride import AdaptiveStride
from core.geometry import Geometry, check_frame
from core.metrics import mean_iou
from core.labels import TeacherLabels
from edge_agent.teacher_client import TeacherError, TeacherRejected
from edge_agent.trainer import Trainer
from core.targets import box_weights

log = logging.getLogger(__name__)


class Teacher(Protocol):
    """What the agent needs from a teacher (edge_agent.teacher_client.TeacherClient)."""

    def label(self, frame_rgb: np.ndarray, groups: Sequence[str], *, frame_index: int) -> TeacherLabels: ...
    def submit(self, frame_rgb: np.ndarray, groups: Sequence[str], **kwargs: Any) -> "Future[TeacherLabels]": ...


@dataclass
class FrameResult:
    """What the agent says about one frame."""

    index: int
    #: uint8 (H, W) at the frame's resolution: 0 = background, k = class_names[k].
    labels: np.ndarray = field(repr=False)
    #: This frame's teacher labels were used to train (replay: this frame; live:
    #: the labels of an earlier frame arrived while this one was processed, see teacher_index).
    teacher_labelled: bool = False
    teacher_index: Optional[int] = None
    #: Gradient steps taken while processing this frame.
    updates: int = 0
    #: Student mean IoU against the teacher on the teacher frame, before and after training.
    accuracy_before: Optional[float] = None
    accuracy_after: Optional[float] = None
    stride: int = 0
    #: ok | waiting | unavailable | rejected | off
    teacher_state: str = "ok"
    teacher_error: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)
    #: The frame itself (RGB), for drawing; not logged.
    image: Optional[np.ndarray] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("labels", "image")}
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out


@dataclass
class _Lesson:
    """A teacher frame being learnt: the student's view of it and the targets."""

    index: int
    image: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    valid: tuple[int, int]  # the unpadded part of the student's grid
    accuracy_before: float
    accuracy: float
    updates: int = 0


class TeacherAvailability:
    """Exponential back-off for a teacher that fails, so a dead one is not hammered."""

    def __init__(self, first_s: float = 0.5, max_s: float = 30.0):
        self.first_s, self.max_s = first_s, max_s
        self.state = "ok"
        self.error: Optional[str] = None
        self.failures = 0
        self.retry_at = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def ok(self) -> None:
        self.state, self.error, self.failures, self.retry_at = "ok", None, 0, 0.0

    def failed(self, exc: Exception, now: float) -> None:
        self.failures += 1
        self.state = "rejected" if isinstance(exc, TeacherRejected) else "unavailable"
        self.error = str(exc)
        delay = min(self.max_s, self.first_s * 2 ** (self.failures - 1))
        hint = getattr(exc, "retry_after_s", None)  # an overloaded server says when to come back
        if hint:
            delay = max(delay, min(float(hint), self.max_s))
        self.retry_at = now + delay
        log.warning("teacher %s (%s); next try in %.1f s", self.state, exc, delay)


class DistillationAgent:
    """Runs Algorithm 1 of the paper around a trainer and a teacher."""

    def __init__(
        self,
        trainer: Trainer,
        teacher: Optional[Teacher],
        config: DistillConfig = DistillConfig(),
        *,
        live: bool = False,
        controller: Optional[AdaptiveStride] = None,
    ):
        self.trainer = trainer
        self.teacher = teacher
        self.config = config
        self.live = live
        self.controller = controller or AdaptiveStride(config)
        self.class_names = list(trainer.manifest.class_names)
        self.groups = self.class_names[1:]
        self.health = TeacherAvailability()
        if teacher is None:
            self.health.state = "off"
        self._geometry: Optional[Geometry] = None
        self._pending: Optional[tuple[int, Future, np.ndarray]] = None
        self._lesson: Optional[_Lesson] = None
        self.frames = 0
        self.teacher_frames = 0
        self.updates = 0

    # -- per frame -------------------------------------------------------------
    def process(self, index: int, frame: np.ndarray) -> FrameResult:
        """Segment one frame and do whatever learning is due on it."""
        t0 = time.perf_counter()
        frame = check_frame(frame)
        geo = self._geometry_for(frame)
        image = geo.image(frame)
        result = FrameResult(index=index, labels=np.empty(0, np.uint8), image=frame)
        timings = {"teacher_ms": 0.0, "train_ms": 0.0, "infer_ms": 0.0}

        if self.teacher is not None and self.controller.is_due(index) and self.health.ready(time.monotonic()):
            self._ask_teacher(index, frame, result, timings)
        if self.live:
            self._collect_answer(result, timings)
        if self._lesson is not None:
            self._learn(result, timings, one_step=self.live)

        ti = time.perf_counter()
        prediction = self.trainer.predict(image)
        timings["infer_ms"] += (time.perf_counter() - ti) * 1e3
        result.labels = geo.to_frame(prediction)
        result.stride = self.controller.stride
        if self.teacher is not None:
            result.teacher_state = "waiting" if self._pending and self.health.state == "ok" else self.health.state
        else:
            result.teacher_state = "off"
        result.teacher_error = self.health.error
        timings["frame_ms"] = (time.perf_counter() - t0) * 1e3
        result.timings = timings
        self.frames += 1
        return result

    # -- teacher ---------------------------------------------------------------
    def _ask_teacher(self, index: int, frame: np.ndarray, result: FrameResult, timings: dict) -> None:
        if self.live:
            try:
                future = self.teacher.submit(frame, self.groups, frame_index=index)
            except Exception as exc:  # e.g. a closed client: segmentation goes on, the teacher is retried later
                self.health.failed(exc, time.monotonic())
                return
            self.controller.start(index)
            self._pending = (index, future, frame)
            return
        start = time.perf_counter()
        try:
            labels = self.teacher.label(frame, self.groups, frame_index=index)
        except TeacherError as exc:
            self.health.failed(exc, time.monotonic())
            return
        finally:
            timings["teacher_ms"] += (time.perf_counter() - start) * 1e3
        self._accept(index, frame, labels, result)

    def _collect_answer(self, result: FrameResult, timings: dict) -> None:
        if self._pending is None or not self._pending[1].done():
            return
        index, future, frame = self._pending
        self._pending = None
        try:
            labels = future.result()
        except TeacherError as exc:
            self.controller.cancel()
            self.health.failed(exc, time.monotonic())
            return
        except Exception as exc:  # a bug or a broken channel must not stop segmentation
            self.controller.cancel()
            self.health.failed(exc, time.monotonic())
            return
        timings["teacher_ms"] += labels.latency_s * 1e3
        self._accept(index, frame, labels, result)

    def _accept(self, index: int, frame: np.ndarray, labels: TeacherLabels, result: FrameResult) -> None:
        self.health.ok()
        if labels.label_map.shape != frame.shape[:2]:
            self.controller.cancel()
            self.health.failed(TeacherRejected(f"teacher label map {labels.label_map.shape} != frame {frame.shape[:2]}"), time.monotonic())
            return
        geo = self._geometry_for(frame)
        image = geo.image(frame)
        target = geo.labels(labels.label_map)
        weights = geo.weights(
            box_weights(frame.shape[:2], [i.box for i in labels.instances],
                        weight=self.config.box_weight, dilation=self.config.box_dilation)
        )
        accuracy = self._accuracy(self.trainer.predict(image), target, geo.scaled_hw)
        self._lesson = _Lesson(index, image, target, weights, geo.scaled_hw, accuracy, accuracy)
        self.teacher_frames += 1
        result.teacher_labelled = True
        result.teacher_index = index
        result.accuracy_before = accuracy

    # -- learning --------------------------------------------------------------
    def _learn(self, result: FrameResult, timings: dict, *, one_step: bool) -> None:
        lesson = self._lesson
        start = time.perf_counter()
        while self.controller.should_update(lesson.updates, lesson.accuracy):
            self.trainer.train_step(lesson.image, lesson.labels, lesson.weights)
            lesson.updates += 1
            result.updates += 1
            self.updates += 1
            lesson.accuracy = self._accuracy(self.trainer.predict(lesson.image), lesson.labels, lesson.valid)
            if one_step:
                break
        timings["train_ms"] += (time.perf_counter() - start) * 1e3
        if not self.controller.should_update(lesson.updates, lesson.accuracy):
            self.controller.finish(lesson.index, lesson.accuracy, lesson.updates)
            result.teacher_index = lesson.index
            result.accuracy_after = lesson.accuracy
            self._lesson = None

    def _accuracy(self, prediction: np.ndarray, target: np.ndarray, valid: tuple[int, int]) -> float:
        h, w = valid
        return mean_iou(prediction[:h, :w], target[:h, :w], len(self.class_names))

    def _geometry_for(self, frame: np.ndarray) -> Geometry:
        if self._geometry is None or self._geometry.frame_hw != frame.shape[:2]:
            self._geometry = Geometry.for_frame(frame.shape[:2], self.config.input_scale)
        return self._geometry

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "teacher_frames": self.teacher_frames,
            "teacher_fraction": self.teacher_frames / self.frames if self.frames else 0.0,
            "updates": self.updates,
            "stride": self.controller.stride,
            "teacher_state": self.health.state,
        }
