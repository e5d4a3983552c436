"""Dynamic batching with fairness and backpressure, independent of gRPC.

Many cameras send frames; one model computes them in batches. Requests wait
in per-camera FIFO queues that are served round-robin, so a camera sending
fast cannot starve the others. The total queue is bounded (and each camera's
share of it): a full queue rejects at once with a retry-after hint instead of
growing memory. A job whose deadline passed before its batch started is
dropped without being computed.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from teacher_server.admission import DeadlineAdmission, ServiceTimes, TooLate, plan_batch
from teacher_server.jobs import DeadlineExpired, Job, QueueFull, ShuttingDown
from teacher_server.scheduling import FairQueue, camera_share, make_queue

__all__ = ["BatcherStats", "DeadlineExpired", "DynamicBatcher", "FairQueue", "Job", "QueueFull", "ShuttingDown"]

log = logging.getLogger(__name__)


@dataclass
class BatcherStats:
    """Counters since start (read them for tests and logs; Prometheus mirrors them)."""

    submitted: int = 0
    rejected: int = 0
    evicted: int = 0
    expired: int = 0
    cancelled: int = 0
    computed: int = 0
    failed: int = 0
    batches: int = 0
    #: Seconds the worker spent computing batches (busy / wall time = utilisation).
    busy_s: float = 0.0
    #: Refused at admission because the measured service time said they would miss their deadline.
    refused_late: int = 0
    #: Admitted although the estimate said no: an idle server that had refused everything for a while.
    probes: int = 0

    @property
    def mean_batch(self) -> float:
        return self.computed / self.batches if self.batches else 0.0


#: process(payloads) -> one result per payload (or raises; then each job is retried alone).
ProcessFn = Callable[[Sequence[Any]], Sequence[Any]]
#: on_batch(batch_size, seconds) after each computed batch.
BatchHook = Callable[[int, float], None]


class DynamicBatcher:
    """Collects jobs from many threads and runs them through `process` in batches.

    A batch starts when `max_batch` jobs are waiting or when the oldest has
    waited `max_delay_s`, whichever comes first; with max_batch=1 it is a
    plain FIFO worker (batching off).
    """

    def __init__(
        self,
        process: ProcessFn,
        *,
        max_batch: int = 8,
        max_delay_s: float = 0.01,
        max_queue: int = 64,
        max_queue_per_camera: Optional[int] = None,
        on_batch: Optional[BatchHook] = None,
        name: str = "teacher-batcher",
        policy: str = "fair",
        deadline_admission: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._process = process
        self._on_batch = on_batch
        #: Who is served first when frames wait: fair (round-robin) or need (teacher_server.scheduling).
        self.policy = policy
        self._queue = make_queue(policy, max_queue, camera_share(max_queue, max_queue_per_camera))
        self._cond = threading.Condition()
        self._accepting = False
        self._stopping = False
        self._busy = 0
        #: Refuse what cannot finish by its deadline and size batches to deadlines (teacher_server.admission).
        self.deadline_admission = deadline_admission
        self._admission = DeadlineAdmission(max_batch=max_batch, delay_s=max_delay_s)
        self._running: Optional[tuple[float, int]] = None  # (start, size) of the batch being computed
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def _times(self) -> ServiceTimes:
        """The measured batch times (admission.ServiceTimes)."""
        return self._admission.times

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "DynamicBatcher":
        with self._cond:
            self._accepting = True
        self._thread.start()
        return self

    def close_intake(self) -> None:
        """Refuse new jobs; queued and running ones still complete."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is queued or running; True if that happened in time."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._queue) or self._busy:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, grace: Optional[float] = None) -> None:
        """Finish queued work (up to `grace` seconds), then fail what is left and end the worker."""
        self.close_intake()
        self.drain(grace)
        with self._cond:
            self._stopping = True
            leftovers = self._queue.drain()
            self._cond.notify_all()
        for job in leftovers:
            _fail(job, ShuttingDown("the teacher is shutting down"))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- producers -----------------------------------------------------------------------
    def precheck(self, camera_id: str, deadline: Optional[float] = None) -> bool:
        """Would a frame of `camera_id` get in now? Raises QueueFull (with a hint) or ShuttingDown.

        Asked before the frame is decoded, so a refusal costs no decoding; pass
        the answer to submit(checked=...) (True: admit it as a probe).
        """
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the teacher is shutting down; try another server or retry later")
            try:
                self._queue.check(camera_id)
            except QueueFull as exc:
                self.stats.rejected += 1
                raise QueueFull(str(exc), self._retry_after_locked(), own=exc.own) from None
            return self._admit_locked(camera_id, deadline)

    def submit(self, camera_id: str, payload: Any, deadline: Optional[float] = None, need: Optional[Any] = None,
               *, checked: Optional[bool] = None) -> Job:
        """Queue one job; raises QueueFull (with a retry-after hint) or ShuttingDown.

        `checked` is precheck's answer when it was asked: a probe is admitted as such; any other frame is
        checked again against the queue as it is now (other frames may have got in while this one was decoded).
        """
        job = Job(camera_id=camera_id, payload=payload, deadline=deadline, need=need)
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the teacher is shutting down; try another server or retry later")
            job.probe = True if checked else self._admit_locked(camera_id, deadline)
            try:
                evicted = self._queue.put(job)
            except QueueFull as exc:
                self.stats.rejected += 1
                raise QueueFull(str(exc), self._retry_after_locked(), own=exc.own) from None
            self.stats.submitted += 1
            if evicted is not None:
                self.stats.evicted += 1
            retry = self._retry_after_locked()
            self._cond.notify_all()
        if evicted is not None:
            _fail(evicted, QueueFull(f"teacher queue is full; camera {evicted.camera_id!r} sends faster than its share", retry,
                                     own=True))
        return job

    def cancel(self, job: Job) -> bool:
        """The caller gave up (deadline, disconnect): drop the job if it has not started."""
        with self._cond:
            removed = self._queue.discard(job)
            if removed:
                self.stats.cancelled += 1
                self._cond.notify_all()
        if removed:
            job.future.cancel()
        return removed

    def forget_camera(self, camera_id: str) -> None:
        """The camera has been gone a while: drop what the queue policy remembers of it (if nothing is queued)."""
        with self._cond:
            if not self._queue.depth(camera_id):
                self._queue.forget_camera(camera_id)

    def remembered_cameras(self) -> int:
        """Cameras the queue policy keeps state for (bounded: see forget_camera)."""
        with self._cond:
            return self._queue.remembered()

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def retry_after_s(self) -> float:
        with self._cond:
            return self._retry_after_locked()

    def _admit_locked(self, camera_id: str, deadline: Optional[float]) -> bool:
        """False: admitted; True: admitted as a probe; QueueFull (with a hint) if it would be answered too late."""
        if not self.deadline_admission or deadline is None:
            return False
        now = time.monotonic()
        running_left = 0.0
        if self._running is not None:
            running_left = self._admission.running_left(*self._running, now)
        idle = self._running is None and not len(self._queue)
        try:
            probe = self._admission.check(now, deadline, self._queue.ahead_of(camera_id), running_left, idle)
        except TooLate as exc:
            self.stats.rejected += 1
            self.stats.refused_late += 1
            raise QueueFull(str(exc), exc.retry_after_s) from None
        self.stats.probes += probe
        return probe

    def _retry_after_locked(self) -> float:
        """How long until the queue has room: the batch running now and the batches queued, by their measured times."""
        now = time.monotonic()
        queued = len(self._queue)
        batches = queued // self.max_batch + 1
        per_batch = self._times.estimate(min(self.max_batch, max(1, queued)), now) or 0.1
        running_left = self._admission.running_left(*self._running, now) if self._running is not None else 0.0
        return max(0.05, running_left + per_batch * batches)

    # -- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not len(self._queue) and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                oldest = self._queue.oldest_enqueued_at()
                window_end = (oldest if oldest is not None else time.monotonic()) + self.max_delay_s
                while len(self._queue) < self.max_batch and not self._stopping:
                    remaining = window_end - time.monotonic()
                    if remaining <= 0 or not self._accepting:
                        break
                    self._cond.wait(remaining)
                if self._stopping:
                    return
                now = time.monotonic()
                batch, expired = self._queue.pop_batch(self.max_batch, now)
                if self.deadline_admission:
                    batch, late, later = plan_batch(batch, now, self._times)
                    self._queue.unpop(later)
                    expired += late
                self.stats.expired += len(expired)
                self._busy += 1
                self._running = (now, len(batch))
            try:
                for job in expired:
                    _fail(job, DeadlineExpired("the deadline passed while the frame waited in the queue; it was not computed"))
                batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
                if batch:
                    self._compute(batch)
            except Exception as exc:  # noqa: BLE001 - the only worker must outlive any one batch
                log.exception("the teacher's batch worker hit an error; failing that batch and serving on")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._running = None
                    self._cond.notify_all()

    def _compute(self, batch: list[Job]) -> None:
        start = time.monotonic()
        for job in batch:
            job.started_at = start
            job.batch_size = len(batch)
        try:
            results = list(self._process([job.payload for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"process returned {len(results)} results for {len(batch)} jobs")
        except Exception as exc:  # noqa: BLE001 - isolate the failing job, keep serving
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying its frames one by one", len(batch), exc)
                for job in batch:
                    job.batch_size = 1
                    self._compute([job])
                return
            log.exception("teacher failed on a frame from camera %r", batch[0].camera_id)
            with self._cond:
                self.stats.failed += 1
            batch[0].future.set_exception(exc)
            return
        elapsed = time.monotonic() - start
        with self._cond:
            self.stats.computed += len(batch)
            self.stats.batches += 1
            self.stats.busy_s += elapsed
            self._admission.observe(len(batch), elapsed)
        # Answer first: a failing metrics hook must never leave a request unanswered.
        for job, result in zip(batch, results):
            _resolve(job, result)
        self._notify_batch(len(batch), elapsed)

    def _notify_batch(self, size: int, seconds: float) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(size, seconds)
        except Exception:  # noqa: BLE001 - metrics are not worth a dead worker
            log.exception("the batcher's on_batch hook failed; serving goes on")


def _resolve(job: Job, result: Any) -> None:
    if not job.future.done():
        job.future.set_result(result)


def _fail(job: Job, exc: Exception) -> None:
    if job.future.cancelled():
        return
    if job.future.set_running_or_notify_cancel():
        job.future.set_exception(exc)
