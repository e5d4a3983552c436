"""Optical-flow label propagation on real DAVIS frames, with the human masks as the teacher."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.davis_data import load_sequence
from evaluation.davis_metrics import db_eval_iou
from evaluation.flow import FLOW_METHODS, FlowBaselineStats, FlowPropagator, iter_flow_baseline


@pytest.fixture(scope="module")
def sequences(davis_root):
    return {name: load_sequence(davis_root, name) for name in ("car-shadow", "blackswan")}


# Measured on these frames (J of frame 5 from frame 0's mask): copying 0.61 / 0.67;
# flow 0.91-0.95 for every method.  Floors leave room for OpenCV version drift.
FLOOR = 0.88


@pytest.mark.parametrize("method", FLOW_METHODS)
@pytest.mark.parametrize("name", ["car-shadow", "blackswan"])
def test_propagated_mask_beats_copying_it(sequences, name, method):
    frames, masks = sequences[name]
    prop = FlowPropagator(method)
    carried = prop.propagate(frames[:6], masks[0].astype(np.uint8))
    assert len(carried) == 5 and carried[-1].dtype == np.uint8
    j_flow = db_eval_iou(masks[5], carried[-1] > 0)
    j_copy = db_eval_iou(masks[5], masks[0])
    assert j_flow >= FLOOR, f"{method} on {name}: J {j_flow:.3f} (copy {j_copy:.3f})"
    assert j_flow > j_copy + 0.2
    assert prop.steps == 5 and prop.seconds > 0


def test_downscaled_flow_still_propagates(sequences):
    frames, masks = sequences["car-shadow"]
    carried = FlowPropagator("dis_ultrafast", scale=0.5).propagate(frames[:6], masks[0].astype(np.uint8))
    assert db_eval_iou(masks[5], carried[-1] > 0) >= FLOOR


def test_warping_never_invents_label_ids(sequences):
    frames, masks = sequences["blackswan"]
    labels = masks[0].astype(np.uint8)
    labels[:100, :200] = 2  # a second class group
    out = FlowPropagator("dis_medium").propagate(frames[:4], labels)
    for lab in out:
        assert set(np.unique(lab)) <= {0, 1, 2}
        assert (lab == 2).any() and (lab == 1).any()


def test_flow_baseline_calls_teacher_on_keyframes_only_and_reports_cost(sequences):
    frames, masks = sequences["blackswan"]
    frames, masks = frames[:17], masks[:17]
    asked: list[int] = []

    def teacher(i, frame):
        assert frame is frames[i]
        asked.append(i)
        return masks[i].astype(np.uint8)

    slow = FlowBaselineStats("dis_medium", 8)
    slow_labels = list(iter_flow_baseline(frames, teacher, 8, "dis_medium", stats=slow))
    assert asked == [0, 8, 16] and slow.teacher_calls == 3 and slow.teacher_frames == [0, 8, 16]
    assert len(slow_labels) == 17 and slow.frames == 17
    for k in (0, 8, 16):
        assert np.array_equal(slow_labels[k], masks[k])
    # Between keyframes the flow labels beat holding the keyframe's labels (fixed stride).
    j_flow = np.mean([db_eval_iou(masks[i], slow_labels[i]) for i in range(17) if i % 8])
    j_hold = np.mean([db_eval_iou(masks[i], masks[i - i % 8]) for i in range(17) if i % 8])
    assert j_flow > j_hold + 0.1, (j_flow, j_hold)
    assert slow.flow_seconds > 0 and slow.flow_ms_per_frame > 0

    fast = FlowBaselineStats("dis_ultrafast", 16)
    assert len(list(iter_flow_baseline(frames, teacher, 16, "dis_ultrafast", stats=fast))) == 17
    assert fast.teacher_calls == 2
    # ULTRAFAST is the cheap one (about 10x less than MEDIUM when measured).
    assert fast.flow_ms_per_frame < slow.flow_ms_per_frame


def test_bad_arguments_say_what_to_do(sequences):
    with pytest.raises(ValueError, match="dis_medium"):
        FlowPropagator("raft")
    with pytest.raises(RuntimeError, match="reset"):
        FlowPropagator().step(sequences["blackswan"].frames[0])
    with pytest.raises(ValueError, match="keyframe_interval"):
        next(iter_flow_baseline([], lambda i, f: f, 0))
