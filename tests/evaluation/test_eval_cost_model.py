"""Speedup over the teacher on every frame, checked against numbers worked out by hand."""
from __future__ import annotations

import pytest

from evaluation.cost import (
    UnitCosts,
    flow_speedup,
    speedup,
    speedup_flops,
    speedup_from_charges,
    speedup_ms,
    total_cost,
    train_step_gflops,
)


def test_measured_milliseconds():
    # 1000 frames x 100 ms teacher = 100 000 ms, against
    # 1000 x 5 ms student + 50 x 100 ms teacher + 200 x 20 ms training = 14 000 ms.
    s = speedup_ms(1000, 50, 200, teacher_ms=100.0, student_infer_ms=5.0, train_step_ms=20.0)
    assert s == pytest.approx(100_000 / 14_000)
    assert total_cost(1000, 50, 200, UnitCosts(100.0, 5.0, 20.0)) == pytest.approx(14_000)


def test_flops():
    # 640 x 400 = 256 000 GFLOPs against 640 x 10 + 10 x 400 + 40 x 30 = 11 600 GFLOPs.
    s = speedup_flops(640, 10, 40, teacher_gflops=400.0, student_infer_gflops=10.0, train_step_gflops=30.0)
    assert s == pytest.approx(256_000 / 11_600)
    assert train_step_gflops(10.0) == 30.0


def test_teacher_on_every_frame_with_free_student_is_no_speedup():
    assert speedup(100, 100, 0, UnitCosts(50.0, 0.0, 0.0)) == pytest.approx(1.0)
    # ...and a non-free student makes it slower than the teacher alone.
    assert speedup(100, 100, 0, UnitCosts(50.0, 5.0, 0.0)) == pytest.approx(50 / 55)


def test_flow_baseline_pays_teacher_on_keyframes_and_flow_elsewhere():
    # 16 frames, keyframes 0 and 8: 1600 / (2 x 100 + 14 x 10) = 1600 / 340.
    assert flow_speedup(16, 2, teacher_cost=100.0, flow_cost=10.0) == pytest.approx(1600 / 340)
    assert speedup_from_charges(10, 3.0, [(10, 1.0), (2, 3.0)]) == pytest.approx(30 / 16)


def test_impossible_inputs_are_rejected():
    with pytest.raises(ValueError, match="n_teacher"):
        speedup(10, 11, 0, UnitCosts(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="n_frames"):
        speedup(0, 0, 0, UnitCosts(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="teacher cost"):
        UnitCosts(0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="costs nothing"):
        speedup(10, 0, 0, UnitCosts(1.0, 0.0, 0.0))
