"""Speedup over running the teacher on every frame (the paper's Table 2 cost model).

Running the teacher on all n frames costs ``n * teacher``.  Online distillation
runs the student on every frame, the teacher on the frames it asks about and a
training step per update:

    speedup = n * teacher / (n * student_infer + n_teacher * teacher + n_updates * train_step)

The same formula holds in any one unit: measured milliseconds (what this
machine paid) or GFLOPs (what the models cost, independent of the machine).
Baselines plug in their own charges through ``speedup_from_charges``
(e.g. a flow baseline pays the teacher on keyframes and flow on the rest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

#: A training step (forward + backward + update) costs about this many
#: forward passes, the usual estimate when only forward FLOPs are counted.
TRAIN_STEP_FLOPS_FACTOR = 3.0


@dataclass(frozen=True)
class UnitCosts:
    """Cost of one teacher call, one student inference and one training step, in one unit."""

    teacher: float
    student_infer: float
    train_step: float
    unit: str = "ms"

    def __post_init__(self) -> None:
        if self.teacher <= 0:
            raise ValueError(f"teacher cost must be > 0, got {self.teacher} {self.unit}")
        if self.student_infer < 0 or self.train_step < 0:
            raise ValueError("student_infer and train_step costs must be >= 0")


def _check_counts(n_frames: int, n_teacher: int, n_updates: int) -> None:
    if n_frames <= 0:
        raise ValueError(f"n_frames must be > 0, got {n_frames}")
    if not 0 <= n_teacher <= n_frames:
        raise ValueError(f"n_teacher must be in [0, n_frames={n_frames}], got {n_teacher}")
    if n_updates < 0:
        raise ValueError(f"n_updates must be >= 0, got {n_updates}")


def speedup_from_charges(n_frames: int, teacher_cost: float, charges: Iterable[tuple[float, float]]) -> float:
    """``n_frames * teacher_cost`` over the sum of ``count * unit_cost`` charges."""
    if n_frames <= 0 or teacher_cost <= 0:
        raise ValueError("n_frames and teacher_cost must be > 0")
    total = 0.0
    for count, unit_cost in charges:
        if count < 0 or unit_cost < 0:
            raise ValueError(f"charges must be non-negative, got count={count} cost={unit_cost}")
        total += count * unit_cost
    if total <= 0:
        raise ValueError("the method costs nothing: give at least one positive charge")
    return n_frames * teacher_cost / total


def total_cost(n_frames: int, n_teacher: int, n_updates: int, costs: UnitCosts) -> float:
    """What online distillation spent on ``n_frames`` frames, in ``costs.unit``."""
    _check_counts(n_frames, n_teacher, n_updates)
    return n_frames * costs.student_infer + n_teacher * costs.teacher + n_updates * costs.train_step


def speedup(n_frames: int, n_teacher: int, n_updates: int, costs: UnitCosts) -> float:
    """Online distillation's speedup over the teacher on every frame."""
    _check_counts(n_frames, n_teacher, n_updates)
    return speedup_from_charges(
        n_frames,
        costs.teacher,
        [(n_frames, costs.student_infer), (n_teacher, costs.teacher), (n_updates, costs.train_step)],
    )


def speedup_ms(
    n_frames: int,
    n_teacher: int,
    n_updates: int,
    *,
    teacher_ms: float,
    student_infer_ms: float,
    train_step_ms: float,
) -> float:
    """Speedup from measured milliseconds per teacher call, inference and training step."""
    return speedup(n_frames, n_teacher, n_updates, UnitCosts(teacher_ms, student_infer_ms, train_step_ms, "ms"))


def speedup_flops(
    n_frames: int,
    n_teacher: int,
    n_updates: int,
    *,
    teacher_gflops: float,
    student_infer_gflops: float,
    train_step_gflops: float,
) -> float:
    """Speedup from GFLOPs per teacher call, inference and training step."""
    return speedup(
        n_frames, n_teacher, n_updates, UnitCosts(teacher_gflops, student_infer_gflops, train_step_gflops, "GFLOPs")
    )


def train_step_gflops(student_infer_gflops: float, factor: float = TRAIN_STEP_FLOPS_FACTOR) -> float:
    """Estimated GFLOPs of a training step from the forward pass's."""
    return factor * student_infer_gflops


def flow_speedup(n_frames: int, n_teacher: int, *, teacher_cost: float, flow_cost: float) -> float:
    """Speedup of a flow baseline: teacher on keyframes, flow + warp on every other frame."""
    _check_counts(n_frames, n_teacher, 0)
    return speedup_from_charges(n_frames, teacher_cost, [(n_teacher, teacher_cost), (n_frames - n_teacher, flow_cost)])
