"""The agent tells a shared teacher its student's need, and honours the teacher's stride-stretch hint."""
from __future__ import annotations

import math

from core.config import DistillConfig
from core.labels import TeacherLabels
from edge_agent.agent import DistillationAgent
from edge_agent.trainer import load_trainer
from evaluation.teacher_labels import CachedTeacher
from tests.edge_agent.agent_helpers import clip_frames


class StretchingTeacher(CachedTeacher):
    """Real cached answers (the teacher's own labels) that carry a stretch hint, recording each need sent."""

    def __init__(self, labels, groups, stretch):
        super().__init__(labels, groups)
        self.stretch = stretch
        self.needs = []

    def label(self, frame_rgb, groups, *, frame_index, score_threshold=None, need=None):
        self.needs.append((frame_index, need))
        answer: TeacherLabels = super().label(frame_rgb, groups, frame_index=frame_index, score_threshold=score_threshold)
        answer.stride_stretch = self.stretch
        return answer


def _labels(frames):
    from teacher_server.labeler import Labeler
    from tests.teacher_server.teacher_helpers import yolo_backend

    labeler = Labeler(yolo_backend())
    return [labeler.label(f, ["person"]) for f in frames]


def _run(artifacts, frames, labels, stretch):
    config = DistillConfig(max_updates=2)
    teacher = StretchingTeacher(labels, ["person"], stretch)
    agent = DistillationAgent(load_trainer(artifacts, backend="ort"), teacher, config)
    results = [agent.process(i, f) for i, f in enumerate(frames)]
    return agent, teacher, results


def test_stretch_hint_moves_the_next_due_frame_and_need_is_sent(artifacts):
    frames = clip_frames(40)
    labels = _labels(frames)
    plain_agent, plain, _ = _run(artifacts, frames, labels, stretch=1.0)
    agent, teacher, results = _run(artifacts, frames, labels, stretch=2.5)

    # Without a hint: Algorithm 1's schedule (stride 8, next due at a multiple of the stride).
    assert [i for i, _ in plain.needs][:2] == [0, 8]
    # With it: the interval after frame 0 is ceil(stride * 2.5) frames, the stride itself unchanged.
    first = agent.controller.history[0]
    asked = [i for i, _ in teacher.needs]
    assert asked[0] == 0 and asked[1] == math.ceil(first.stride_after * 2.5)
    assert asked[1] > plain.needs[1][0]
    assert agent.stretched == len(asked) - (1 if agent._lesson is not None else 0)

    # The need: nothing known before the first teacher frame, then the accuracy measured on it before training.
    _, need0 = teacher.needs[0]
    assert need0.accuracy is None and need0.frames_since_teacher == 0 and need0.threshold == 0.8
    _, need1 = teacher.needs[1]
    assert need1.accuracy == results[0].accuracy_before
    assert need1.frames_since_teacher == asked[1] and need1.stride == first.stride_after
    assert need1.failed == (not first.success)


def test_a_teacher_without_need_support_is_called_as_before(artifacts):
    frames = clip_frames(10)
    labels = _labels(frames)
    teacher = CachedTeacher(labels, ["person"])  # label() takes no need=: it must not get one
    agent = DistillationAgent(load_trainer(artifacts, backend="ort"), teacher, DistillConfig(max_updates=1))
    for i, f in enumerate(frames):
        agent.process(i, f)
    assert teacher.asked[0] == 0 and agent.counters.teacher_frames >= 1
