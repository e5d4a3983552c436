"""When to ask the teacher and how long to train: Algorithm 1 of the paper.

Mullapudi et al. (ICCV 2019), Algorithm 1::

    δ ← δ_min
    for t ← 0..n:
      if t ≡ 0 (mod δ):
        L_t ← Teacher(I_t); u ← 0
        while u < u_max and Acc(Student(I_t), L_t) < a_thr: update student; u ← u+1
        if Acc(Student(I_t), L_t) >= a_thr: δ ← min(2δ, δ_max) else δ ← max(δ/2, δ_min)
      P_t ← Student(I_t)

The controller is a pure object (no I/O, no clock) so the offline evaluation,
the live agent and the tests drive the very same decisions.  Instead of
testing ``t mod δ == 0`` it keeps ``next_due``: the first frame index after
the last teacher frame that is a multiple of the current stride.  With every
frame processed that is exactly Algorithm 1; in live mode, where frames are
dropped and the teacher answers late, a dropped due frame simply makes the
next processed frame due, instead of silently skipping a whole stride.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Optional

from core.config import DistillConfig


@dataclass(frozen=True)
class TeacherDecision:
    """One teacher frame as the controller saw it (for logs and plots)."""

    frame_index: int
    #: Student accuracy against the teacher after the last update.
    accuracy: float
    #: Gradient steps taken on this teacher frame.
    updates: int
    success: bool
    stride_before: int
    stride_after: int
    #: The first frame index that is due after this decision.
    next_due: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_multiple_at_least(value: int, stride: int) -> int:
    return -(-value // stride) * stride


class _TeacherSchedule:
    """Shared bookkeeping: which frames are due, the update rule, the history.

    Subclasses decide only how the stride reacts to a success or a failure.
    """

    def __init__(self, config: DistillConfig, stride: int, *, history_size: int = 4096) -> None:
        if not isinstance(config, DistillConfig):
            raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size}")
        self.config = config
        self._initial_stride = int(stride)
        self._history_size = history_size
        self.reset()

    # -- state ---------------------------------------------------------------
    def reset(self) -> None:
        """Back to frame 0 with the initial stride (a new video)."""
        self._stride = self._initial_stride
        self._next_due = 0
        self._last_teacher_frame: Optional[int] = None
        self._pending: Optional[int] = None
        self._deferred_until = 0  # no teacher frame before this one (a saturated teacher's stretch hint)
        self._history: deque[TeacherDecision] = deque(maxlen=self._history_size)
        self._teacher_frames = 0
        self._successes = 0
        self._total_updates = 0

    @property
    def stride(self) -> int:
        """Current number of frames between teacher frames (δ)."""
        return self._stride

    @property
    def next_due(self) -> int:
        """The first frame index at which the teacher is asked next."""
        return self._next_due

    @property
    def pending(self) -> Optional[int]:
        """Frame index whose teacher answer is awaited (live mode), else None."""
        return self._pending

    @property
    def last_teacher_frame(self) -> Optional[int]:
        return self._last_teacher_frame

    @property
    def history(self) -> list[TeacherDecision]:
        """The most recent decisions, oldest first (bounded by history_size)."""
        return list(self._history)

    # -- the loop's questions ------------------------------------------------
    def is_due(self, t: int) -> bool:
        """Should frame ``t`` go to the teacher?

        False while an answer is pending, so a slow teacher is never asked
        twice for the same stride.
        """
        if t < 0:
            raise ValueError(f"frame index must be >= 0, got {t}")
        return self._pending is None and t >= self._next_due

    def start(self, t: int) -> None:
        """Mark frame ``t`` as sent to the teacher (live mode, optional).

        Synchronous callers can go straight from is_due() to finish().
        """
        if not self.is_due(t):
            raise RuntimeError(
                f"frame {t} is not due (next due {self._next_due}, pending {self._pending}); "
                "ask is_due(t) before start(t)"
            )
        self._pending = t

    def should_update(self, updates_done: int, accuracy: float) -> bool:
        """Take another gradient step on the current teacher frame?

        Algorithm 1's inner loop: keep going while below the threshold and
        fewer than u_max steps were taken.  ``accuracy == threshold`` is a
        success and stops training.
        """
        if updates_done < 0:
            raise ValueError(f"updates_done must be >= 0, got {updates_done}")
        return updates_done < self.config.max_updates and self._check_accuracy(accuracy) < self.config.accuracy_threshold

    def finish(self, t: int, accuracy: float, updates: int = 0, accuracy_before: Optional[float] = None) -> int:
        """Record the outcome of teacher frame ``t`` and return the new stride.

        ``accuracy`` is the student's accuracy against the teacher after the
        last update (Acc(Student(I_t), L_t) in Algorithm 1); ``updates`` the
        number of steps taken, kept for the history only; ``accuracy_before``
        the accuracy on the frame before any update on it (needed by the
        ``unseen`` stride signal).
        """
        accuracy = self._check_accuracy(accuracy)
        if accuracy_before is not None:
            accuracy_before = self._check_accuracy(accuracy_before)
        if self._pending is not None and t != self._pending:
            raise RuntimeError(f"teacher frame {self._pending} is pending, cannot finish frame {t}")
        if self._pending is None and t < self._next_due:
            raise RuntimeError(f"frame {t} was not due (next due {self._next_due})")
        if not 0 <= updates <= self.config.max_updates:
            raise ValueError(f"updates must be in [0, {self.config.max_updates}] (max_updates), got {updates}")
        success = self._success(accuracy, accuracy_before)
        before = self._stride
        self._stride = self._next_stride(before, success)
        self._last_teacher_frame = t
        self._pending = None
        self._next_due = _first_multiple_at_least(t + 1, self._stride)
        self._teacher_frames += 1
        self._successes += int(success)
        self._total_updates += updates
        self._history.append(
            TeacherDecision(t, accuracy, updates, success, before, self._stride, self._next_due)
        )
        return self._stride

    def cancel(self) -> None:
        """Forget a pending request (teacher unreachable): the next frame is due again."""
        self._pending = None

    def bring_forward(self, t: int) -> int:
        """Make frame ``t`` due now (the scene changed); returns next_due.

        No effect while an answer is pending, and never earlier than a
        saturated teacher's deferral (:meth:`defer`): the fleet's request
        for room outranks one camera's scene change.
        """
        t = max(int(t), self._deferred_until)
        if self._pending is None and t < self._next_due:
            self._next_due = t
        return self._next_due

    def observe(self, t: int, *, agreement: Optional[float] = None, cut: bool = False,
                teacher_empty: Optional[bool] = None, output_accuracy: Optional[float] = None) -> None:
        """What frame ``t`` showed between teacher frames; only the ``change`` signal listens."""

    def defer(self, until: int) -> int:
        """Ask the teacher no sooner than frame ``until`` (a saturated teacher's stretch hint); returns next_due.

        The stride itself is unchanged: only this one interval is longer.
        """
        if until > self._next_due:
            self._next_due = int(until)
        self._deferred_until = max(self._deferred_until, int(until))
        return self._next_due

    def summary(self) -> dict[str, Any]:
        """Counters over the whole run (not only the bounded history)."""
        n = self._teacher_frames
        return {
            "teacher_frames": n,
            "successes": self._successes,
            "success_rate": self._successes / n if n else None,
            "total_updates": self._total_updates,
            "mean_updates": self._total_updates / n if n else None,
            "stride": self._stride,
            "next_due": self._next_due,
        }

    # -- policy --------------------------------------------------------------
    def _success(self, accuracy: float, accuracy_before: Optional[float]) -> bool:
        """Did the student keep up? Algorithm 1: reached the threshold on the frame it trained on."""
        return accuracy >= self.config.accuracy_threshold

    def _next_stride(self, stride: int, success: bool) -> int:
        raise NotImplementedError

    @staticmethod
    def _check_accuracy(accuracy: float) -> float:
        accuracy = float(accuracy)
        if math.isnan(accuracy) or not 0.0 <= accuracy <= 1.0:
            raise ValueError(
                f"accuracy must be in [0, 1], got {accuracy}; when neither map has a foreground "
                "class use metrics.mean_iou(..., empty=1.0)"
            )
        return accuracy

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stride={self._stride}, next_due={self._next_due}, pending={self._pending})"


class AdaptiveStride(_TeacherSchedule):
    """Algorithm 1: double the stride on success, halve it on failure.

    What counts as success is the config's ``stride_signal``: ``paper`` is
    Algorithm 1 exactly (the accuracy after training on the teacher frame);
    ``unseen`` is the accuracy on each new teacher frame *before* training on
    it, averaged over the last ``stride_window`` teacher frames. The second is
    the honest one: a student fits the frame it has just trained on almost
    always, whether or not it keeps up with the frames in between.

    ``change`` is Algorithm 1 on the product's output: with fusion the output
    is the carried answer and the student together, so success is that
    output's accuracy on the new teacher frame *before* the answer replaced
    it (how well the oldest carried answer held up), not the student's after
    training.  It also watches the frames in between (fed by :meth:`observe`
    from the flow carrier): a scene cut makes the very frame due; the student disagreeing
    with the carried teacher answer (mean IoU below ``CHANGE_AGREEMENT`` on
    ``CHANGE_FRAMES`` frames in a row: a new object, or a student that lost
    track) makes the next frame due once ``min_stride`` frames have passed
    since the last teacher frame.  A teacher frame with no foreground in it,
    where the student saw none either, proves nothing: the stride stays.
    """

    #: Below this agreement between the student and the carried answer, a frame counts as changed.
    CHANGE_AGREEMENT = 0.5
    #: Consecutive changed frames that bring the teacher forward (one is often flicker).
    CHANGE_FRAMES = 2

    def __init__(self, config: Optional[DistillConfig] = None, *, history_size: int = 4096) -> None:
        config = config if config is not None else DistillConfig()
        super().__init__(config, getattr(config, "min_stride", 1), history_size=history_size)
        self._unseen: deque[float] = deque(maxlen=config.stride_window)
        self._changed = 0
        self._teacher_empty = False
        self._output_accuracy: Optional[float] = None
        #: Teacher frames brought forward by a cut / by disagreement (``change`` signal).
        self.cut_triggers = 0
        self.change_triggers = 0

    def reset(self) -> None:
        super().reset()
        if hasattr(self, "_unseen"):
            self._unseen.clear()
            self._changed = 0
            self._teacher_empty = False
            self._output_accuracy = None

    def observe(self, t: int, *, agreement: Optional[float] = None, cut: bool = False,
                teacher_empty: Optional[bool] = None, output_accuracy: Optional[float] = None) -> None:
        if self.config.signal != "change":
            return
        if teacher_empty is not None:  # said on teacher frames, before finish()
            self._teacher_empty = bool(teacher_empty)
        if output_accuracy is not None:
            self._output_accuracy = self._check_accuracy(output_accuracy)
        if cut:
            self._changed = 0
            before = self._next_due
            if self.bring_forward(t) < before:
                self.cut_triggers += 1
            return
        if agreement is None:
            return
        self._changed = self._changed + 1 if agreement < self.CHANGE_AGREEMENT else 0
        last = self._last_teacher_frame
        if (self._changed >= self.CHANGE_FRAMES and self._pending is None and t + 1 < self._next_due
                and (last is None or t + 1 - last >= self.config.min_stride)):
            self._changed = 0
            before = self._next_due
            if self.bring_forward(t + 1) < before:
                self.change_triggers += 1

    def _next_stride(self, stride: int, success: bool) -> int:
        if self.config.signal == "change" and self._teacher_empty and success:
            return stride  # nothing on the teacher frame and nothing in the student's: no proof either way
        if success:
            return min(2 * stride, self.config.max_stride)
        return max(stride // 2, self.config.min_stride)

    def _success(self, accuracy: float, accuracy_before: Optional[float]) -> bool:
        if self.config.signal == "change" and self._output_accuracy is not None:
            judged, self._output_accuracy = self._output_accuracy, None
            return judged >= self.config.accuracy_threshold
        if self.config.signal in ("paper", "change"):
            return accuracy >= self.config.accuracy_threshold
        if accuracy_before is None:
            raise ValueError("stride_signal='unseen' needs finish(..., accuracy_before=...): the accuracy on "
                             "the teacher frame before training on it")
        self._unseen.append(accuracy_before)
        return sum(self._unseen) / len(self._unseen) >= self.config.accuracy_threshold


class FixedStride(_TeacherSchedule):
    """Baseline: the teacher every ``stride`` frames, whatever the accuracy.

    Training per teacher frame follows the same rule as Algorithm 1 (stop at
    the threshold or after max_updates), so only the scheduling differs.
    """

    def __init__(self, stride: int, config: Optional[DistillConfig] = None, *, history_size: int = 4096) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        super().__init__(config if config is not None else DistillConfig(), stride, history_size=history_size)

    def _next_stride(self, stride: int, success: bool) -> int:
        return stride
