"""The teacher's answer carried by optical flow and fused with the student (DistillConfig.fusion).

Real frames throughout: a DAVIS frame moved by known offsets (a camera pan),
a cut to another real clip, real ONNX Runtime students.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.config import DistillConfig
from core.geometry import Geometry
from core.metrics import mean_iou
from edge_agent.flow_carry import FlowCarrier
from tests.conftest import load_davis_frame

H, W = 192, 320  # the window the "camera" sees
MARGIN = 48


def _pan(step: tuple[int, int], frames: int):
    """Windows of one real frame moved by ``step`` pixels per frame, and its labels moved the same way."""
    image, _ = load_davis_frame("dog", 0)
    import cv2

    image = cv2.resize(image, (427, 240), interpolation=cv2.INTER_AREA)
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[80:170, 120:250] = 1  # a real region of the frame (the dog's area) and a second class beside it
    labels[40:80, 260:310] = 2
    out = []
    for t in range(frames):
        y, x = 10 + step[1] * t, 20 + step[0] * t
        out.append((np.ascontiguousarray(image[y:y + H, x:x + W]), labels[y:y + H, x:x + W].copy()))
    return out


def test_carried_answer_follows_a_pan_over_ten_frames():
    pan = _pan((3, 2), 11)
    carrier = FlowCarrier(3, max_age=32)
    carrier.advance(0, pan[0][0])
    assert carrier.set_answer(0, pan[0][1])
    student = np.zeros((H, W), np.uint8)  # a student that sees nothing: the output is the carried answer
    for t in range(1, 11):
        carrier.advance(t, pan[t][0])
        fused, seen = carrier.fuse(t, student)
        assert seen.age == t
        assert mean_iou(fused, pan[t][1], 3) >= 0.95, f"frame {t}"
    assert seen.carried_fraction > 0.8  # only the strip that entered the window falls back to the student


def test_a_cut_to_another_clip_drops_the_carried_answer_on_the_next_frame():
    pan = _pan((2, 1), 3)
    carrier = FlowCarrier(3, max_age=32)
    carrier.advance(0, pan[0][0])
    carrier.set_answer(0, pan[0][1])
    carrier.advance(1, pan[1][0])
    assert carrier.fuse(1, np.zeros((H, W), np.uint8))[1].carried_fraction > 0.9
    import cv2

    other, _ = load_davis_frame("blackswan", 0)
    other = np.ascontiguousarray(cv2.resize(other, (W, H), interpolation=cv2.INTER_AREA))
    assert carrier.advance(2, other) is True
    student = np.full((H, W), 2, np.uint8)
    fused, seen = carrier.fuse(2, student)
    assert seen.age is None and seen.carried_fraction == 0.0
    assert np.array_equal(fused, student)  # no stale label painted over the new scene


def test_a_late_answer_lands_on_the_pixels_of_the_frame_it_arrives_at():
    pan = _pan((3, 2), 9)
    carrier = FlowCarrier(3, max_age=32)
    for t in range(9):  # the answer for frame 2 arrives only at frame 8
        carrier.advance(t, pan[t][0])
    assert carrier.set_answer(2, pan[2][1])
    fused, seen = carrier.fuse(8, np.zeros((H, W), np.uint8))
    assert seen.age == 6
    assert mean_iou(fused, pan[8][1], 3) >= 0.95
    assert mean_iou(pan[2][1], pan[8][1], 3) < 0.8  # not a static scene: the answer had to move


def test_the_flow_chain_is_bounded_and_too_late_answers_are_not_carried():
    pan = _pan((1, 0), 40)
    carrier = FlowCarrier(3, max_age=8)
    for t in range(40):
        carrier.advance(t, pan[t][0])
        assert carrier.chain_length <= 8
    assert not carrier.set_answer(20, pan[20][1])  # 19 frames late: beyond the chain
    assert carrier.fuse(39, np.zeros((H, W), np.uint8))[1].age is None
    assert carrier.set_answer(33, pan[33][1])  # 6 frames late: replayed
    assert mean_iou(carrier.fuse(39, np.zeros((H, W), np.uint8))[0], pan[39][1], 3) >= 0.95


# -- in the agent -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pan_clip():
    return _pan((2, 1), 24)


def _run(artifacts, clip, config, live=False):
    from edge_agent.agent import DistillationAgent
    from edge_agent.trainer import load_trainer
    from evaluation.teacher_labels import CachedTeacher  # a teacher over precomputed answers

    trainer = load_trainer(artifacts)
    labels = [np.minimum(lab, 1) for _, lab in clip]  # the person artifacts have one foreground class
    agent = DistillationAgent(trainer, CachedTeacher(labels, ["person"]), config, live=live)
    out = []
    for i, (frame, _) in enumerate(clip):
        r = agent.process(i, frame)
        # What the student alone says right now, with the weights this frame's output was made with.
        geo = Geometry.for_frame(frame.shape[:2], config.input_scale)
        out.append((r, geo.to_frame(trainer.predict(geo.image(frame)))))
    return agent, out, labels


def test_fusion_none_outputs_the_student_alone_bit_for_bit(artifacts, pan_clip):
    agent, out, _ = _run(artifacts, pan_clip, DistillConfig(fusion="none", max_updates=2))
    assert agent.carrier is None
    for r, student in out:
        assert np.array_equal(r.labels, student)
        assert r.carried_fraction == 0.0 and r.carried_age is None and "flow_ms" not in r.timings


def test_fusion_flow_outputs_the_teacher_answer_on_teacher_frames_and_reports_its_cost(artifacts, pan_clip):
    agent, out, labels = _run(artifacts, pan_clip, DistillConfig(fusion="flow", max_updates=2))
    teacher_frames = [r.index for r, _ in out if r.teacher_labelled]
    assert teacher_frames and teacher_frames[0] == 0
    for r, _ in out:
        assert "flow_ms" in r.timings and "fusion_ms" in r.timings
        if r.teacher_labelled:
            assert np.array_equal(r.labels, labels[r.index])
            assert r.carried_age == 0
            if r.index > 0:  # the output this frame had before its answer: the answer carried from the last one
                assert r.output_accuracy >= 0.9 and r.output_accuracy > r.accuracy_before
        else:
            assert r.carried_age == r.index - max(i for i in teacher_frames if i <= r.index)
    # Between teacher frames the carried answer follows the pan better than a student
    # that has seen one frame.
    fused = np.mean([mean_iou(r.labels, labels[r.index], 2) for r, _ in out[1:8]])
    alone = np.mean([mean_iou(s, labels[r.index], 2) for r, s in out[1:8]])
    assert fused >= 0.95 and fused > alone


def test_change_signal_asks_the_teacher_at_a_cut(artifacts, pan_clip):
    import cv2

    other, _ = load_davis_frame("blackswan", 0)
    other = np.ascontiguousarray(cv2.resize(other, (W, H), interpolation=cv2.INTER_AREA))
    clip = list(pan_clip[:12]) + [(other, np.zeros((H, W), np.uint8))] * 4
    config = DistillConfig(fusion="flow", stride_signal="change", max_updates=1)
    agent, out, _ = _run(artifacts, clip, config)
    cut = out[12][0]
    assert cut.scene_cut and cut.teacher_labelled  # asked on the cut frame itself, not 8..64 frames later
    assert agent.controller.cut_triggers == 1
    paper, out_paper, _ = _run(artifacts, clip, replace(config, stride_signal="paper"))
    assert not out_paper[12][0].teacher_labelled


def test_live_a_late_answer_is_fused_on_the_pixels_of_the_frame_it_arrives_at(artifacts):
    """A real gRPC teacher that takes 0.4 s: its answer for frame k is carried to the frame it lands on."""
    from edge_agent.agent import DistillationAgent
    from edge_agent.teacher_client import TeacherClient
    from edge_agent.trainer import load_trainer
    from tests.edge_agent.fake_teacher import FakeTeacher, start_fake_teacher

    pan = [(f, np.minimum(lab, 1)) for f, lab in _pan((1, 0), 60)]
    stack = np.stack([f.astype(np.float32) for f, _ in pan])

    def answer(rgb: np.ndarray) -> np.ndarray:  # the labels of the pan frame the request carried
        return pan[int(np.argmin(((stack - rgb.astype(np.float32)) ** 2).mean(axis=(1, 2, 3))))][1]

    running = start_fake_teacher(FakeTeacher(delay_s=0.4, label_fn=answer))
    landed = None
    try:
        with TeacherClient(running.url) as teacher:
            agent = DistillationAgent(load_trainer(artifacts), teacher, DistillConfig(fusion="flow"), live=True)
            for i in range(2000):  # after the pan, the camera holds still until the answer lands
                frame, labels = pan[min(i, len(pan) - 1)]
                r = agent.process(i, frame)
                if r.teacher_labelled:
                    landed = (r, labels)
                    break
    finally:
        running.stop()
    assert landed is not None
    r, labels = landed
    assert r.teacher_index < r.index and r.carried_age == r.index - r.teacher_index
    assert mean_iou(r.labels, labels, 2) >= 0.95
    assert agent.carrier.chain_length <= agent.config.fusion_max_age

