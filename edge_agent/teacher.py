"""What the agent needs from a teacher, and how a teacher says it failed.

The agent depends on this module only, never on a transport: the gRPC client
(``edge_agent.teacher_client.TeacherClient``), the evaluation's cached answers
(``evaluation.teacher_labels.CachedTeacher``) and the benchmarks' simulated
teachers all implement :class:`Teacher` and raise :class:`TeacherError`.

Bytes, defined once: ``TeacherLabels.bytes_up`` / ``bytes_down`` (and a
failed call's ``TeacherError.bytes_up`` / ``bytes_down``) are what the network
carried for that one call, every attempt included (a request resent after
back-pressure counts each time it was sent).  The agent copies them onto the
``FrameResult`` of the frame where the call ended and into its counters, so the
per-frame log, the counters and the wire agree.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from core.labels import TeacherLabels
from core.need import NeedSignal


class TeacherError(Exception):
    """A label request failed.

    ``code`` is the transport's status (a ``grpc.StatusCode`` for the gRPC client), ``details``
    the server's message, ``retry_after_s`` the server's hint of when to try again, if it gave one;
    ``bytes_up`` / ``bytes_down`` what the failed call carried over the network (all attempts).
    """

    def __init__(self, message: str, code: Any = None, details: str = "",
                 retry_after_s: Optional[float] = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details
        self.retry_after_s = retry_after_s
        self.bytes_up = 0
        self.bytes_down = 0


class TeacherUnavailable(TeacherError):
    """The teacher could not answer in time (down, overloaded, shutting down): try again later."""


class TeacherTimeout(TeacherUnavailable):
    """The deadline passed before the teacher answered."""


class TeacherRejected(TeacherError):
    """The teacher refused this request (bad frame, unknown group, wrong token): retrying will not help."""


class Teacher(Protocol):
    """Everything the agent asks of a teacher.

    ``need`` is the student's state when it asks (see core.need); every teacher
    accepts it, and one that schedules nothing by it (a cache, a single-camera
    server) ignores it.  ``label`` blocks (replay mode); ``submit`` returns at
    once with a future (live mode).  Failures are raised (or set on the future)
    as :class:`TeacherError`; anything else is treated as a failing teacher too.
    """

    def label(self, frame_rgb: np.ndarray, groups: Sequence[str], *, frame_index: int,
              score_threshold: Optional[float] = None, need: Optional[NeedSignal] = None) -> TeacherLabels: ...

    def submit(self, frame_rgb: np.ndarray, groups: Sequence[str], *, frame_index: int,
               score_threshold: Optional[float] = None,
               need: Optional[NeedSignal] = None) -> "Future[TeacherLabels]": ...
