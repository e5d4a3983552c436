"""One frame waiting for the model, and the ways its wait can end early.

The queue policies (scheduling.py), the batcher (batcher.py) and the Ray
ingress's queue all pass these around; they live here so none of those has
to import another to name them.
"""
from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional


class QueueFull(Exception):
    """Backpressure: try again after `retry_after_s` seconds.

    `own` is True when the camera is over its own share of the queue (not when
    the server is simply full): only then does its pacing hold it to the hint.
    """

    def __init__(self, message: str, retry_after_s: float, own: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.own = own


class ShuttingDown(Exception):
    """The batcher no longer accepts or computes work."""


class DeadlineExpired(Exception):
    """The job's deadline passed while it waited; it was not computed."""


@dataclass(eq=False)
class Job:
    """One request waiting for its batch; its result arrives on `future`."""

    camera_id: str
    payload: Any
    deadline: Optional[float]  # time.monotonic() seconds, None = no deadline
    enqueued_at: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    #: Filled in when the job's batch runs.
    started_at: Optional[float] = None
    batch_size: int = 0
    #: The student's need (core.need.NeedSignal) when the request carried one; the `need` policy ranks by it.
    need: Optional[Any] = None
    #: Set by the `need` policy when the teacher is saturated: the answer's stride_stretch hint.
    stride_stretch: float = 1.0
    #: Admitted although the service-time estimate said it would be late (admission.DeadlineAdmission's
    #: probe): a batch plan never drops it as hopeless before its deadline really passed.
    probe: bool = False
