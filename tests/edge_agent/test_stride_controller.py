"""Algorithm 1's schedule: strides, teacher frames and update counts."""
from __future__ import annotations

import random

import pytest

from core.config import DistillConfig
from edge_agent.stride import AdaptiveStride, FixedStride


def run_sync(controller, accuracies, n_frames, gain=0.0):
    """Drive the controller over frames 0..n_frames-1 as a synchronous loop.

    The k-th teacher frame starts at accuracies[k]; each update adds `gain`
    (so gain=0 means updates never help).  Returns (teacher frames, strides
    after each decision, updates per teacher frame).
    """
    teacher, strides, updates = [], [], []
    k = 0
    for t in range(n_frames):
        if controller.is_due(t):
            acc = accuracies[k]
            k += 1
            u = 0
            while controller.should_update(u, acc):
                u += 1
                acc = min(1.0, acc + gain)
            teacher.append(t)
            updates.append(u)
            strides.append(controller.finish(t, acc, u))
    return teacher, strides, updates


def algorithm1_reference(config, accuracies, n_frames, gain=0.0):
    """Algorithm 1 transcribed literally (t mod δ), to compare against."""
    delta = config.min_stride
    teacher, strides, updates = [], [], []
    k = 0
    for t in range(n_frames):
        if t % delta == 0:
            acc = accuracies[k]
            k += 1
            u = 0
            while u < config.max_updates and acc < config.accuracy_threshold:
                acc = min(1.0, acc + gain)
                u += 1
            if acc >= config.accuracy_threshold:
                delta = min(2 * delta, config.max_stride)
            else:
                delta = max(delta // 2, config.min_stride)
            teacher.append(t)
            strides.append(delta)
            updates.append(u)
    return teacher, strides, updates


def test_successes_double_the_stride_up_to_max():
    c = AdaptiveStride(DistillConfig(min_stride=8, max_stride=64))
    teacher, strides, updates = run_sync(c, [0.95] * 6, 8 + 16 + 32 + 64 + 64 + 1)
    # frame 0 -> stride 16 -> frame 16 -> 32 -> frame 32 -> 64 -> frame 64 -> 64 -> frame 128
    assert c.stride == 64
    assert strides == [16, 32, 64, 64, 64]
    assert teacher == [0, 16, 32, 64, 128]
    assert updates == [0] * 5


def test_stride_sequence_from_eight_is_8_16_32_64_64():
    c = AdaptiveStride(DistillConfig(min_stride=8, max_stride=64))
    seen = [c.stride]
    for t in (0, 16, 32, 64):
        assert c.is_due(t)
        seen.append(c.finish(t, 0.9))
    assert seen == [8, 16, 32, 64, 64]


def test_failures_halve_the_stride_down_to_min():
    c = AdaptiveStride(DistillConfig(min_stride=8, max_stride=64))
    for t in (0, 16, 32, 64):
        c.finish(t, 0.99)
    assert c.stride == 64 and c.next_due == 128
    strides = [c.finish(t, 0.1) for t in (128, 160, 176, 184, 192)]
    # 64 -> 32 (next 160) -> 16 (next 176) -> 8 (184) -> 8 (192) -> 8
    assert strides == [32, 16, 8, 8, 8]
    assert [d.next_due for d in c.history[-5:]] == [160, 176, 184, 192, 200]


def test_mixed_sequence_matches_hand_computed_schedule():
    cfg = DistillConfig(accuracy_threshold=0.8, min_stride=8, max_stride=64, max_updates=8)
    c = AdaptiveStride(cfg)
    # success, success, failure, success, failure, failure, success
    accs = [0.9, 0.85, 0.5, 0.8, 0.2, 0.3, 0.81]
    teacher, strides, updates = run_sync(c, accs, 96)
    # t=0 ok -> 16; t=16 ok -> 32; t=32 fail -> 16; t=48 ok -> 32; t=64 fail -> 16;
    # t=80 fail -> 8; t=88 ok -> 16; next due 96 (outside the run)
    assert teacher == [0, 16, 32, 48, 64, 80, 88]
    assert strides == [16, 32, 16, 32, 16, 8, 16]
    assert updates == [0, 0, 8, 0, 8, 8, 0]
    assert c.next_due == 96


def test_schedule_equals_literal_algorithm_1_on_random_sequences():
    rng = random.Random(1234)
    for threshold in (0.7, 0.8, 0.9):
        cfg = DistillConfig(accuracy_threshold=threshold)
        for gain in (0.0, 0.03, 0.2):
            accs = [rng.random() for _ in range(2000)]
            got = run_sync(AdaptiveStride(cfg), accs, 1500, gain)
            want = algorithm1_reference(cfg, accs, 1500, gain)
            assert got == want
            assert max(got[2]) <= cfg.max_updates


def test_threshold_equality_counts_as_success_and_stops_training():
    cfg = DistillConfig(accuracy_threshold=0.8)
    c = AdaptiveStride(cfg)
    assert not c.should_update(0, 0.8)
    assert c.should_update(0, 0.7999)
    assert c.finish(0, 0.8) == 16
    assert c.history[-1].success


def test_updates_are_bounded_by_max_updates():
    cfg = DistillConfig(max_updates=3)
    c = AdaptiveStride(cfg)
    assert [c.should_update(u, 0.0) for u in range(5)] == [True, True, True, False, False]
    with pytest.raises(ValueError, match="max_updates"):
        c.finish(0, 0.0, updates=4)


def test_dropped_due_frame_makes_next_processed_frame_due():
    c = AdaptiveStride(DistillConfig(min_stride=8, max_stride=64))
    assert c.finish(0, 0.9) == 16
    # frames 16 and 17 were dropped by the live stream; 18 is the first one seen
    assert not c.is_due(15)
    assert c.is_due(18)
    c.finish(18, 0.9)  # stride 32: next multiple of 32 after 18 is 32
    assert c.next_due == 32


def test_pending_request_blocks_new_requests_until_answer_arrives():
    c = AdaptiveStride(DistillConfig(min_stride=8, max_stride=64))
    c.start(0)
    assert c.pending == 0
    assert not any(c.is_due(t) for t in range(1, 40))  # teacher is slow
    with pytest.raises(RuntimeError, match="pending"):
        c.finish(3, 0.9)
    assert c.finish(0, 0.9) == 16  # answer for frame 0 arrives at frame 39
    # next multiple of 16 after frame 0 is 16, already past: frame 40 is due
    assert c.is_due(40) and c.next_due == 16


def test_cancel_releases_a_pending_request():
    c = AdaptiveStride()
    c.start(0)
    c.cancel()
    assert c.is_due(1) and c.pending is None


def test_start_and_finish_refuse_frames_that_are_not_due():
    c = AdaptiveStride(DistillConfig(min_stride=8))
    c.finish(0, 0.1)
    with pytest.raises(RuntimeError, match="not due"):
        c.start(3)
    with pytest.raises(RuntimeError, match="not due"):
        c.finish(3, 0.5)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_accuracy_outside_unit_interval_is_rejected(bad):
    c = AdaptiveStride()
    with pytest.raises(ValueError, match="accuracy"):
        c.finish(0, bad)
    with pytest.raises(ValueError, match="accuracy"):
        c.should_update(0, bad)


def test_summary_and_history_track_decisions():
    c = AdaptiveStride(history_size=2)
    c.finish(0, 0.5, updates=8)
    c.finish(8, 0.9, updates=2)
    c.finish(16, 0.95, updates=0)
    assert [d.frame_index for d in c.history] == [8, 16]  # bounded
    s = c.summary()
    assert s["teacher_frames"] == 3 and s["successes"] == 2 and s["total_updates"] == 10
    assert c.history[-1].to_dict()["stride_before"] == 16
    c.reset()
    assert c.stride == 8 and c.next_due == 0 and c.history == []


def test_fixed_stride_never_changes_stride_but_trains_by_the_same_rule():
    cfg = DistillConfig(max_updates=4)
    c = FixedStride(10, cfg)
    teacher, strides, updates = run_sync(c, [0.1, 0.95, 0.3, 0.99, 0.0], 45, gain=0.2)
    assert teacher == [0, 10, 20, 30, 40]
    assert strides == [10] * 5
    # 0.1 -> 0.3, 0.5, 0.7, 0.9: 4 steps; 0.3 -> 0.5, 0.7, 0.9: 3 steps; 0.0 -> 0.8 at 4 steps
    assert updates == [4, 0, 3, 0, 4]


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_stride=0), "min_stride"),
    (dict(min_stride=16, max_stride=8), "min_stride"),
    (dict(max_updates=0), "max_updates"),
    (dict(accuracy_threshold=0.0), "accuracy_threshold"),
    (dict(accuracy_threshold=1.2), "accuracy_threshold"),
])
def test_invalid_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveStride(DistillConfig(**kwargs))


@pytest.mark.parametrize("stride", [0, -3, 2.5, True])
def test_fixed_stride_rejects_bad_strides(stride):
    with pytest.raises(ValueError, match="stride"):
        FixedStride(stride)


def test_controller_requires_a_distill_config():
    with pytest.raises(TypeError, match="DistillConfig"):
        AdaptiveStride({"min_stride": 8})


def test_change_signal_judges_the_fused_output_before_the_answer_not_the_student_after_training():
    from core.config import DistillConfig as Config
    from edge_agent.stride import AdaptiveStride as Stride

    c = Stride(Config(stride_signal="change", accuracy_threshold=0.9))
    c.observe(0, teacher_empty=False, output_accuracy=0.95)
    assert c.finish(0, 0.5, 8, accuracy_before=0.5) == 16  # the output held: doubles though the student failed
    c.observe(16, teacher_empty=False, output_accuracy=0.6)
    assert c.finish(16, 0.99, 1, accuracy_before=0.9) == 8  # the output did not: halves though the student fits
    c.observe(24, teacher_empty=True, output_accuracy=1.0)
    assert c.finish(24, 1.0, 0, accuracy_before=1.0) == 8  # nothing there and nothing seen: no proof either way


def test_change_signal_brings_the_teacher_forward_on_disagreement_and_at_a_cut():
    from core.config import DistillConfig as Config
    from edge_agent.stride import AdaptiveStride as Stride

    c = Stride(Config(stride_signal="change", min_stride=8, max_stride=64))
    c.observe(0, teacher_empty=False, output_accuracy=0.99)
    c.finish(0, 0.99, 0, accuracy_before=0.99)
    assert c.next_due == 16
    for t in range(1, 6):
        c.observe(t, agreement=0.2)  # disagreeing, but within min_stride of the last teacher frame
    assert c.next_due == 16
    c.observe(7, agreement=0.1)
    assert c.next_due == 8 and c.change_triggers == 1
    c.finish(8, 0.95, 0, accuracy_before=0.95)
    due = c.next_due
    c.observe(9, cut=True)
    assert c.next_due == 9 and c.cut_triggers == 1 and due > 9


def test_scene_changes_do_not_override_a_saturated_teachers_deferral():
    from core.config import DistillConfig as Config
    from edge_agent.stride import AdaptiveStride as Stride

    c = Stride(Config(stride_signal="change", min_stride=8))
    c.observe(0, teacher_empty=False, output_accuracy=0.5)
    c.finish(0, 0.5, 1, accuracy_before=0.5)
    c.defer(20)  # the teacher asked for room
    c.observe(9, cut=True)
    for t in range(10, 14):
        c.observe(t, agreement=0.1)
    assert c.next_due == 20 and c.cut_triggers == 0 and c.change_triggers == 0
