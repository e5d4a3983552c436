"""The fleet ingress's queue: the native policy queue and deadline admission, drained into Serve.

TeacherServicer asks a DynamicBatcher for submit/cancel; on Ray the answer is
`FleetQueue`. Frames wait here in the native server's own policy queue
(`scheduling.make_queue`: fair round-robin or need, bounded in total and per
camera, with eviction), and are sent to the model deployment while its replicas
have free slots (`slots`: their max_ongoing_requests together). So the policy
decides who goes next whenever the replicas are busy, and Serve's own queue
only fills when fewer replicas run than were planned for (autoscaling, a dead one).

Admission is the native `admission.DeadlineAdmission` on what this ingress
sees: the batch times the replicas report (plus the hops to them), the frames
ahead of this one here and at the replicas, shared by the replicas, and the
deadline the ingress knows (see ServeCallContext). Its estimates recover by
themselves and an idle fleet that refused everything for a while admits a
probe, as on the native server. `precheck` answers before the frame is decoded.
Everything here is per ingress replica.

Ray is imported only inside functions.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import CancelledError
from typing import Any, Optional

from core.labels import TeacherLabels
from teacher_server.admission import DeadlineAdmission, TooLate
from teacher_server.jobs import DeadlineExpired, Job, QueueFull, ShuttingDown
from teacher_server.scheduling import make_queue

log = logging.getLogger(__name__)

#: Times one frame is sent to a replica before its caller gets UNAVAILABLE.
REPLICA_ATTEMPTS = 3


def _replica_died(exc: BaseException) -> bool:
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError) or isinstance(getattr(exc, "cause", None), RayActorError)


def _fail(job: Job, exc: BaseException) -> None:
    """End a job that never reached a replica (queued, evicted or expired)."""
    if job.future.set_running_or_notify_cancel():
        job.future.set_exception(exc)


class FleetQueue:
    """What TeacherServicer asks of a DynamicBatcher, answered by a policy queue drained into Serve's handle."""

    def __init__(self, model: Any, *, max_batch: int, max_queue: int, max_per_camera: int, policy: str = "fair",
                 deadline_admission: bool = True, slots: int, replicas: int = 1, max_delay_s: float = 0.01,
                 metrics: Any = None, stats: Any = None) -> None:
        if slots < 1 or replicas < 1:
            raise ValueError("slots and replicas must be >= 1")
        self._model, self._metrics, self._stats = model, metrics, stats
        # The names TeacherServicer reads (GetInfo, LabelStream).
        self.max_batch, self.max_queue, self.max_per_camera = max_batch, max_queue, max_per_camera
        self.policy, self.deadline_admission = policy, deadline_admission
        self.slots, self.replicas, self.max_delay_s = slots, replicas, max_delay_s
        self._queue = make_queue(policy, max_queue, max(1, min(max_per_camera, max_queue)))
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sent = 0  # frames at the replicas now
        self._tasks: dict[Job, asyncio.Task] = {}  # touched on the loop only
        self._admission = DeadlineAdmission(max_batch=max_batch, delay_s=max_delay_s)
        self._times = self._admission.times
        self._overhead_s = 0.0  # the hops ingress -> replica -> ingress, beyond the model's own time
        #: Counts since start, as BatcherStats names them.
        self.refused_late = 0
        self.evicted = 0
        self.probes = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- what TeacherServicer calls ----------------------------------------------------------
    def precheck(self, camera_id: str, deadline: Optional[float] = None) -> bool:
        """Would a frame of `camera_id` get in now? Asked before decoding; QueueFull (with a hint) or
        ShuttingDown if not. True: admit it as a probe (pass it to submit as `checked`)."""
        if self._loop is None:
            raise ShuttingDown("the fleet ingress is not ready yet; retry")
        with self._lock:
            try:
                self._queue.check(camera_id)
            except QueueFull as exc:
                raise QueueFull(str(exc), self._retry_after_locked(), own=exc.own) from None
            return self._admit_locked(camera_id, deadline)

    def submit(self, camera_id: str, payload: Any, deadline: Optional[float] = None, need: Optional[Any] = None,
               *, checked: Optional[bool] = None) -> Job:
        """Queue one frame; QueueFull (with a retry-after hint) when the queue, the camera's share or the
        deadline says no; ShuttingDown before the ingress is ready. `checked`: precheck's answer."""
        loop = self._loop
        if loop is None:
            raise ShuttingDown("the fleet ingress is not ready yet; retry")
        job = Job(camera_id, payload, deadline, need=need)
        with self._lock:
            job.probe = True if checked else self._admit_locked(camera_id, deadline)
            try:
                evicted = self._queue.put(job)
            except QueueFull as exc:
                raise QueueFull(str(exc), self._retry_after_locked(), own=exc.own) from None
            if evicted is not None:
                self.evicted += 1
            retry = self._retry_after_locked()
        self._gauge()
        if evicted is not None:
            _fail(evicted, QueueFull(f"teacher queue is full; camera {evicted.camera_id!r} sends faster than its share",
                                     retry, own=True))
        loop.call_soon_threadsafe(self._pump)
        return job

    def cancel(self, job: Job) -> bool:
        """The caller gave up: drop the frame if it still waits here, else cancel its call to the replica."""
        with self._lock:
            removed = self._queue.discard(job)
        if removed:
            job.future.cancel()
            self._gauge()
            return True
        loop = self._loop
        if loop is not None and not job.future.done():
            loop.call_soon_threadsafe(self._cancel_sent, job)
        return False

    def forget_camera(self, camera_id: str) -> None:
        """The camera has been gone a while: the queue policy forgets its pace (bounded state)."""
        with self._lock:
            self._queue.forget_camera(camera_id)

    def queue_depth(self) -> int:
        with self._lock:
            return len(self._queue) + self._sent

    def retry_after_s(self) -> float:
        with self._lock:
            return self._retry_after_locked()

    # -- admission -------------------------------------------------------------------------------
    def _admit_locked(self, camera_id: str, deadline: Optional[float]) -> bool:
        """False: admitted; True: admitted as a probe; QueueFull (with a hint) if it would be answered too late.

        What is ahead (waiting here and at the replicas) is shared by the replicas; the hops to
        them are added to the deadline's side, as time the frame does not have."""
        if not self.deadline_admission or deadline is None:
            return False
        now = time.monotonic()
        ahead = math.ceil((self._queue.ahead_of(camera_id) + self._sent) / self.replicas)
        idle = self._sent == 0 and not len(self._queue)
        try:
            probe = self._admission.check(now, deadline - self._overhead_s, ahead, 0.0, idle)
        except TooLate as exc:
            self.refused_late += 1
            raise QueueFull(str(exc), exc.retry_after_s) from None
        self.probes += probe
        return probe

    def _retry_after_locked(self) -> float:
        """About when the queue has room: the batches ahead, shared by the replicas, at their measured cost."""
        per_batch = self._times.estimate(self.max_batch, time.monotonic()) or 0.2
        batches = (len(self._queue) + self._sent) / (self.max_batch * self.replicas)
        return max(0.05, per_batch * batches + self._overhead_s)

    def observe(self, size: int, compute_s: float, round_trip_s: float) -> None:
        """A replica answered a frame computed in a batch of `size` in `compute_s`, `round_trip_s` after it was sent."""
        with self._lock:
            self._admission.observe(max(1, size), compute_s)
            self._overhead_s = 0.8 * self._overhead_s + 0.2 * max(0.0, round_trip_s - compute_s)

    # -- the loop side ---------------------------------------------------------------------------
    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.in_flight(self.queue_depth())

    def _pump(self) -> None:
        """Send waiting frames, in the policy's order, while the replicas have free slots (on the loop)."""
        with self._lock:
            room = self.slots - self._sent
            if room <= 0 or not len(self._queue):
                return
            batch, expired = self._queue.pop_batch(room, time.monotonic())
            self._sent += len(batch)
        for job in expired:
            _fail(job, DeadlineExpired("the deadline passed while the frame waited in the queue; it was not computed"))
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                with self._lock:
                    self._sent -= 1
                continue
            task = asyncio.get_running_loop().create_task(self._label(job))
            self._tasks[job] = task
            task.add_done_callback(lambda done, job=job: self._finish(job, done))
        self._gauge()

    def _cancel_sent(self, job: Job) -> None:
        task = self._tasks.get(job)
        if task is not None:
            task.cancel()

    def _finish(self, job: Job, task: asyncio.Task) -> None:
        self._tasks.pop(job, None)
        with self._lock:
            self._sent -= 1
        if task.cancelled():
            job.future.set_exception(CancelledError())
        elif task.exception() is not None:
            job.future.set_exception(task.exception())
        else:
            job.future.set_result(task.result())
        self._pump()
        self._gauge()

    async def _label(self, job: Job) -> TeacherLabels:
        from ray.serve.exceptions import BackPressureError

        for attempt in range(1, REPLICA_ATTEMPTS + 1):
            sent = time.monotonic()
            response = self._model.label.remote(job.payload)
            try:
                result = await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError as exc:
                raise QueueFull(f"teacher fleet queue is full ({exc.message})", self.retry_after_s()) from None
            except Exception as exc:  # noqa: BLE001 - only a dead replica is worth another try here
                if not _replica_died(exc):
                    raise
                expired = job.deadline is not None and time.monotonic() >= job.deadline
                if attempt == REPLICA_ATTEMPTS or expired:
                    raise ShuttingDown(f"the replica computing this frame went away ({type(exc).__name__}); retry") from None
                log.warning("a model replica died with a frame of %s in flight (attempt %d); sending it again", job.camera_id, attempt)
                if self._stats is not None:
                    self._stats.record_resend.remote()
                continue
            compute_s = (result.timings.get("inference_ms", 0.0) + result.timings.get("postprocess_ms", 0.0)) / 1e3
            now = time.monotonic()
            job.started_at = max(job.enqueued_at, now - compute_s)
            job.batch_size = int(result.timings.get("batch_size", 1))
            self.observe(job.batch_size, compute_s, now - sent)
            return result
        raise AssertionError("unreachable")
