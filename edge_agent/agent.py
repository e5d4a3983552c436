"""The online distillation loop: segment every frame, learn from the teacher now and then.

One object, two modes.  Replay (evaluation): the teacher is waited for and
training on a teacher frame completes before the next frame, so a run is
deterministic.  Live: the teacher request is in flight while the student keeps
segmenting; when the labels arrive the student trains on the frame they belong
to, one step per processed frame, so no frame waits for more than one step.
The student never waits on the network in live mode, and a dead teacher never
stops segmentation in either mode.

Each frame's output is the student's prediction fused with the last teacher
answer carried to the frame by optical flow (``edge_agent/flow_carry.py``;
``DistillConfig.fusion``); a late live answer is replayed through the flow
steps since its frame, so it lands on the right pixels.
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from core.config import DistillConfig
from core.geometry import Geometry, check_frame
from core.labels import TeacherLabels
from core.metrics import mean_iou
from core.need import NeedSignal
from core.targets import box_weights
from edge_agent.counters import AgentCounters
from edge_agent.flow_carry import FlowCarrier
from edge_agent.stride import AdaptiveStride
from edge_agent.student import TrainBatch, Trainer
from edge_agent.teacher import Teacher, TeacherRejected

log = logging.getLogger(__name__)


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
    #: Bytes the network carried for the teacher call that ended on this frame (an answer learnt from,
    #: or a failure), every attempt included (0 = none; see edge_agent.teacher).
    bytes_up: int = 0
    bytes_down: int = 0
    #: The source as the stream saw it when this frame was read (ok | reconnecting), and its reconnects so far.
    source_state: str = "ok"
    reconnects: int = 0
    #: With fusion=flow: the share of the output's pixels that came from the carried teacher answer,
    #: and that answer's age in frames (None: nothing carried, the output is the student's).
    carried_fraction: float = 0.0
    carried_age: Optional[int] = None
    #: On a teacher frame: mean IoU against its answer of the output this frame had without it (the
    #: fused output with fusion=flow, else the student's): the product's own accuracy on unseen frames.
    output_accuracy: Optional[float] = None
    #: The step into this frame looked like a scene cut (the carried answer was dropped).
    scene_cut: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    #: The frame itself (RGB), for drawing; not logged.
    image: Optional[np.ndarray] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("labels", "image")}
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out


@dataclass
class _Targets:
    """A teacher answer on the student's grid, built once (off the frame thread in live mode)."""

    image: np.ndarray
    labels: np.ndarray
    batch: TrainBatch  # validated and converted once for every step on this lesson
    valid: tuple[int, int]  # the unpadded part of the student's grid


@dataclass
class _Lesson:
    """A teacher frame being learnt: its targets and how far the student got."""

    index: int
    targets: _Targets
    accuracy_before: float
    accuracy: float
    updates: int = 0
    #: The teacher's stride-stretch hint that came with the answer (1 = none).
    stretch: float = 1.0


def check_config_matches(config: DistillConfig, manifest: Any) -> None:
    """The optimizer lives in the artifacts: a config that says otherwise must not be silently ignored."""
    for knob in ("learning_rate", "momentum"):
        wanted, baked = getattr(config, knob), getattr(manifest, knob)
        if abs(wanted - baked) > 1e-9 * max(1.0, abs(baked)):
            raise ValueError(
                f"DistillConfig.{knob}={wanted:g} but the artifacts were exported with {knob}={baked:g}: "
                f"re-export them with `jitnet export --{'lr' if knob == 'learning_rate' else knob} {wanted:g}` "
                f"or set {knob}={baked:g} in the config"
            )


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
        check_config_matches(config, trainer.manifest)
        self.class_names = list(trainer.manifest.class_names)
        self.groups = self.class_names[1:]
        self.health = TeacherAvailability()
        if teacher is None:
            self.health.state = "off"
        self._geometry: Optional[Geometry] = None
        #: The last teacher answer carried by optical flow (fusion=flow), else None.
        #: (frame index, the output it would have had without its teacher answer), while that answer is awaited.
        self._asked_output: Optional[tuple[int, np.ndarray]] = None
        self.carrier: Optional[FlowCarrier] = (
            FlowCarrier(len(self.class_names), max_age=config.fusion_max_age) if config.fusion == "flow" else None)
        self._pending: Optional[tuple[int, Future]] = None
        self._lesson: Optional[_Lesson] = None
        # (key, weights version, prediction): one forward per frame and per update, never two
        # for the same image at the same weights (replay's last accuracy check is the frame's own).
        self._last_prediction: Optional[tuple[int, int, np.ndarray]] = None
        #: Accuracy on the last teacher frame before training on it (the need signal's accuracy).
        self._last_unseen: Optional[float] = None
        #: Teacher frames whose answer asked for a longer interval (the teacher was saturated).
        self.stretched = 0
        #: Frames, teacher frames, updates, bytes, failures, times: what every report reads.
        self.counters = AgentCounters()

    # -- per frame -------------------------------------------------------------
    def process(self, index: int, frame: np.ndarray) -> FrameResult:
        """Segment one frame and do whatever learning is due on it."""
        t0 = time.perf_counter()
        frame = check_frame(frame)
        geo = self._geometry_for(frame)
        image = geo.image(frame, validated=True)
        result = FrameResult(index=index, labels=np.empty(0, np.uint8), image=frame)
        timings = {"teacher_ms": 0.0, "train_ms": 0.0, "infer_ms": 0.0}
        if self.carrier is not None:
            sh, sw = geo.scaled_hw
            result.scene_cut = self.carrier.advance(index, image[:sh, :sw])
            timings["flow_ms"] = self.carrier.flow_ms
            self.controller.observe(index, cut=result.scene_cut)

        if self.teacher is not None and self.controller.is_due(index) and self.health.ready(time.monotonic()):
            self._ask_teacher(index, frame, image, result, timings)
        if self.live:
            # The frame's own prediction first: a train step never delays this frame's labels.
            prediction = self._predict(index, image, timings)
            self._collect_answer(result, timings)
            result.labels = self._output(index, geo, prediction, result, timings)
            if self._lesson is not None:
                self._learn(result, timings, one_step=True)
        else:
            if self._lesson is not None:
                self._learn(result, timings, one_step=False)
            result.labels = self._output(index, geo, self._predict(index, image, timings), result, timings)
        result.stride = self.controller.stride
        if self.teacher is not None:
            result.teacher_state = "waiting" if self._pending and self.health.state == "ok" else self.health.state
        else:
            result.teacher_state = "off"
        result.teacher_error = self.health.error
        timings["frame_ms"] = (time.perf_counter() - t0) * 1e3
        result.timings = timings
        self.counters.add(result)
        return result

    def _output(self, index: int, geo: Geometry, prediction: np.ndarray, result: FrameResult,
                timings: dict) -> np.ndarray:
        """The frame's labels: the student's, fused with the carried teacher answer when fusion is on."""
        if self.carrier is None:
            return geo.to_frame(prediction)
        start = time.perf_counter()
        sh, sw = geo.scaled_hw
        fused, seen = self.carrier.fuse(index, prediction[:sh, :sw])
        result.carried_fraction, result.carried_age = seen.carried_fraction, seen.age
        if seen.age:  # teacher frames themselves are judged by Algorithm 1, not by agreement
            self.controller.observe(index, agreement=seen.agreement)
        out = geo.to_frame(fused)
        timings["fusion_ms"] = (time.perf_counter() - start) * 1e3
        return out

    # -- teacher ---------------------------------------------------------------
    def need(self, index: int) -> NeedSignal:
        """What this student tells a shared teacher about itself when it asks at frame ``index``."""
        history = self.controller.history
        last = self.controller.last_teacher_frame
        return NeedSignal(
            accuracy=self._last_unseen,
            threshold=self.config.accuracy_threshold,
            failed=bool(history) and not history[-1].success,
            stride=self.controller.stride,
            frames_since_teacher=0 if last is None else max(0, index - last),
        )

    def _ask_teacher(self, index: int, frame: np.ndarray, image: np.ndarray, result: FrameResult, timings: dict) -> None:
        threshold, need = self.config.score_threshold, self.need(index)
        if self.carrier is not None:
            # What this frame's output would be without the answer: the output's own unseen accuracy,
            # which the ``change`` stride signal judges (the same forward _accept needs, computed once).
            sh, sw = self._geometry.scaled_hw
            prediction = self._predict(index, image, timings if self.live else None)
            self._asked_output = (index, self.carrier.fuse(index, prediction[:sh, :sw])[0])
        if self.live:
            try:
                future = self.teacher.submit(frame, self.groups, frame_index=index, score_threshold=threshold, need=need)
            except Exception as exc:  # e.g. a closed client: segmentation goes on, the teacher is retried later
                self._teacher_failed(exc, result)
                return
            self.controller.start(index)
            self._pending = (index, self._prepared_later(future, frame, image))
            return
        start = time.perf_counter()
        try:
            labels = self.teacher.label(frame, self.groups, frame_index=index, score_threshold=threshold, need=need)
        except Exception as exc:  # like live mode: a bug or a broken channel must not end segment()
            self._teacher_failed(exc, result)
            return
        finally:
            timings["teacher_ms"] += (time.perf_counter() - start) * 1e3
        try:
            targets = self._targets(frame, image, labels)
        except ValueError as exc:  # a teacher that answers nonsense is a failing teacher, not a crash
            self._teacher_failed(_unusable(labels, exc), result)
            return
        self._accept(index, labels, targets, result)

    def _teacher_failed(self, exc: Exception, result: FrameResult) -> None:
        """A teacher call ended without an answer to learn from: back off, count it and its bytes."""
        self.health.failed(exc, time.monotonic())
        self.counters.teacher_failed()
        result.bytes_up += getattr(exc, "bytes_up", 0)
        result.bytes_down += getattr(exc, "bytes_down", 0)

    def _prepared_later(self, future: "Future[TeacherLabels]", frame: np.ndarray, image: np.ndarray) -> "Future":
        """A future of (labels, targets): the targets are built in the thread that receives the answer."""
        prepared: Future = Future()

        def on_answer(done: "Future[TeacherLabels]") -> None:
            try:
                labels = done.result()
                try:
                    targets = self._targets(frame, image, labels)
                except ValueError as exc:
                    raise _unusable(labels, exc) from exc
                prepared.set_result((labels, targets))
            except BaseException as exc:  # delivered to the frame thread by _collect_answer
                prepared.set_exception(exc)

        future.add_done_callback(on_answer)
        return prepared

    def _collect_answer(self, result: FrameResult, timings: dict) -> None:
        if self._pending is None or not self._pending[1].done():
            return
        index, future = self._pending
        self._pending = None
        try:
            labels, targets = future.result()
        except Exception as exc:  # a TeacherError, a bug or a broken channel must not stop segmentation
            self.controller.cancel()
            if isinstance(exc, ValueError):  # the answer arrived but cannot be learnt from
                exc = TeacherRejected(f"unusable teacher answer: {exc}")
            self._teacher_failed(exc, result)
            return
        timings["teacher_ms"] += labels.latency_s * 1e3
        self._accept(index, labels, targets, result)

    def _targets(self, frame: np.ndarray, image: np.ndarray, labels: TeacherLabels) -> _Targets:
        """The teacher's answer on the student's grid; ValueError when it cannot be learnt from."""
        if labels.label_map.shape != frame.shape[:2]:
            raise ValueError(f"teacher label map {labels.label_map.shape} != frame {frame.shape[:2]}")
        geo = Geometry.for_frame(frame.shape[:2], self.config.input_scale)
        target = geo.labels(labels.label_map)
        weights = geo.weights(
            box_weights(frame.shape[:2], [i.box for i in labels.instances],
                        weight=self.config.box_weight, dilation=self.config.box_dilation)
        )
        return _Targets(image, target, self.trainer.prepare(image, target, weights), geo.scaled_hw)

    def _accept(self, index: int, labels: TeacherLabels, targets: _Targets, result: FrameResult) -> None:
        self.health.ok()
        h, w = targets.valid
        if self.carrier is not None:  # a late answer is replayed through the flow steps since its frame
            self.carrier.set_answer(index, targets.labels[:h, :w])
        output_accuracy = None
        if self._asked_output is not None and self._asked_output[0] == index:
            output_accuracy = mean_iou(self._asked_output[1], targets.labels[:h, :w], len(self.class_names))
        self._asked_output = None
        self.controller.observe(index, teacher_empty=not bool(targets.labels[:h, :w].any()),
                                output_accuracy=output_accuracy)
        accuracy = self._accuracy(self._predict(index, targets.image, None), targets.labels, targets.valid)
        result.output_accuracy = output_accuracy if output_accuracy is not None else accuracy
        self._lesson = _Lesson(index, targets, accuracy, accuracy, stretch=float(getattr(labels, "stride_stretch", 1.0) or 1.0))
        self._last_unseen = accuracy
        result.teacher_labelled = True
        result.bytes_up, result.bytes_down = labels.bytes_up, labels.bytes_down
        result.teacher_index = index
        result.accuracy_before = accuracy

    # -- learning --------------------------------------------------------------
    def _learn(self, result: FrameResult, timings: dict, *, one_step: bool) -> None:
        lesson, t = self._lesson, self._lesson.targets
        start = time.perf_counter()
        while self.controller.should_update(lesson.updates, lesson.accuracy):
            self.trainer.step(t.batch)
            lesson.updates += 1
            result.updates += 1
            lesson.accuracy = self._accuracy(self._predict(lesson.index, t.image, None), t.labels, t.valid)
            if one_step:
                break
        timings["train_ms"] += (time.perf_counter() - start) * 1e3
        if not self.controller.should_update(lesson.updates, lesson.accuracy):
            self.controller.finish(lesson.index, lesson.accuracy, lesson.updates, lesson.accuracy_before)
            if lesson.stretch > 1.0:  # a saturated teacher asked for a longer interval: honour it once
                self.stretched += 1
                self.controller.defer(lesson.index + math.ceil(self.controller.stride * lesson.stretch))
            result.teacher_index = lesson.index
            result.accuracy_after = lesson.accuracy
            self._lesson = None

    def _predict(self, key: int, image: np.ndarray, timings: Optional[dict]) -> np.ndarray:
        """The student's prediction for frame ``key``, computed once per weights version."""
        cached = self._last_prediction
        if cached is not None and cached[0] == key and cached[1] == self.trainer.version:
            return cached[2]
        start = time.perf_counter()
        prediction = self.trainer.predict(image)
        if timings is not None:
            timings["infer_ms"] += (time.perf_counter() - start) * 1e3
        self._last_prediction = (key, self.trainer.version, prediction)
        return prediction

    def _accuracy(self, prediction: np.ndarray, target: np.ndarray, valid: tuple[int, int]) -> float:
        h, w = valid
        return mean_iou(prediction[:h, :w], target[:h, :w], len(self.class_names))

    def _geometry_for(self, frame: np.ndarray) -> Geometry:
        if self._geometry is None or self._geometry.frame_hw != frame.shape[:2]:
            self._geometry = Geometry.for_frame(frame.shape[:2], self.config.input_scale)
        return self._geometry


def _unusable(labels: TeacherLabels, exc: Exception) -> TeacherRejected:
    """A teacher answer that arrived but cannot be learnt from: a rejection that still carried its bytes."""
    error = TeacherRejected(f"unusable teacher answer: {exc}")
    error.bytes_up, error.bytes_down = labels.bytes_up, labels.bytes_down
    return error
