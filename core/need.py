"""How much a camera's student needs the teacher: the signal both sides of the wire share.

The agent knows how its student did on the last teacher frame; a teacher
serving many cameras knows nothing of it unless told. This is what the agent
tells (``StudentNeed`` in ``protos/teacher.proto``) and what a need-aware
queue (``teacher_server.scheduling``) ranks by.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class NeedSignal:
    """The student's state when it asks for a teacher frame."""

    #: Mean IoU against the teacher on the last teacher frame, before training on it (None: no frame yet).
    accuracy: Optional[float]
    #: The accuracy it must reach (Algorithm 1's threshold).
    threshold: float
    #: The last teacher frame was a failure (the stride was halved).
    failed: bool = False
    #: Frames between teacher frames right now.
    stride: int = 0
    #: Frames since the last teacher frame (0 = none yet).
    frames_since_teacher: int = 0

    @property
    def deficit(self) -> float:
        """How far below its threshold the student is (negative: above it).

        A student that has not seen the teacher yet counts as failing outright
        (accuracy 0): it has learnt nothing of this camera.
        """
        accuracy = 0.0 if self.accuracy is None else float(self.accuracy)
        return float(self.threshold) - accuracy
