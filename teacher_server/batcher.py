"""Dynamic batching with fairness and backpressure, independent of gRPC.

Many cameras send frames; one model computes them in batches. Requests wait
in per-camera FIFO queues that are served round-robin, so a camera sending
fast cannot starve the others. The total queue is bounded (and each camera's
share of it): a full queue rejects at once with a retry-after hint instead of
growing memory. A job whose deadline passed before its batch started is
dropped without being computed.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from teacher_server.admission import ServiceTimes, plan_batch, wait_estimate

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Backpressure: try again after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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


class FairQueue:
    """Per-camera FIFO queues served round-robin, bounded in total and per camera.

    Not thread-safe on its own: DynamicBatcher holds its lock around every call.
    """

    def __init__(self, max_total: int, max_per_camera: int) -> None:
        if max_total < 1 or max_per_camera < 1:
            raise ValueError("queue bounds must be >= 1")
        self.max_total = max_total
        self.max_per_camera = max_per_camera
        self._queues: dict[str, collections.deque[Job]] = {}
        self._ring: collections.deque[str] = collections.deque()  # cameras with work, in serving order
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def depth(self, camera_id: str) -> int:
        q = self._queues.get(camera_id)
        return len(q) if q else 0

    def oldest_enqueued_at(self) -> Optional[float]:
        heads = [q[0].enqueued_at for q in self._queues.values() if q]
        return min(heads) if heads else None

    def put(self, job: Job) -> Optional[Job]:
        """Admit `job`; returns a job pushed out to make room, or raises QueueFull.

        When the queue is full, a camera holding fewer jobs than the busiest
        one still gets in: the busiest camera's newest job is pushed out.
        """
        own = self.depth(job.camera_id)
        if own >= self.max_per_camera:
            raise QueueFull(f"camera {job.camera_id!r} already has {own} frames queued (limit {self.max_per_camera})", 0.0)
        evicted = None
        if self._total >= self.max_total:
            busiest = max(self._queues, key=lambda c: len(self._queues[c]))
            if len(self._queues[busiest]) <= own + 1:
                raise QueueFull(f"teacher queue is full ({self._total} frames)", 0.0)
            evicted = self._queues[busiest].pop()
            self._total -= 1
            self._forget_if_empty(busiest)
        q = self._queues.setdefault(job.camera_id, collections.deque())
        if not q:
            self._ring.append(job.camera_id)
        q.append(job)
        self._total += 1
        return evicted

    def discard(self, job: Job) -> bool:
        """Remove a queued job (its caller went away); False if it was not queued."""
        q = self._queues.get(job.camera_id)
        if not q:
            return False
        try:
            q.remove(job)
        except ValueError:
            return False
        self._total -= 1
        self._forget_if_empty(job.camera_id)
        return True

    def pop_batch(self, max_size: int, now: float) -> tuple[list[Job], list[Job]]:
        """Up to max_size live jobs, one camera at a time in turn; plus the expired ones dropped."""
        batch: list[Job] = []
        expired: list[Job] = []
        while self._ring and len(batch) < max_size:
            camera = self._ring.popleft()
            q = self._queues[camera]
            job = q.popleft()
            self._total -= 1
            if q:
                self._ring.append(camera)
            else:
                del self._queues[camera]
            if job.future.cancelled():
                continue
            if job.deadline is not None and job.deadline <= now:
                expired.append(job)
                continue
            batch.append(job)
        return batch, expired

    def unpop(self, jobs: Sequence[Job]) -> None:
        """Put jobs taken by pop_batch back at the head of their queues (the next batch takes them first)."""
        for job in reversed(jobs):
            q = self._queues.get(job.camera_id)
            if not q:
                q = self._queues[job.camera_id] = collections.deque()
                if job.camera_id in self._ring:
                    self._ring.remove(job.camera_id)
                self._ring.appendleft(job.camera_id)
            q.appendleft(job)
            self._total += 1

    def ahead_of(self, camera_id: str) -> int:
        """Jobs served before a new job of `camera_id` in round-robin order (an estimate for other orders)."""
        own = self.depth(camera_id)
        return sum(min(len(q), own + 1) for c, q in self._queues.items() if c != camera_id) + own

    def drain(self) -> list[Job]:
        jobs = [j for q in self._queues.values() for j in q]
        self._queues.clear()
        self._ring.clear()
        self._total = 0
        return jobs

    def _forget_if_empty(self, camera: str) -> None:
        if not self._queues.get(camera):
            self._queues.pop(camera, None)
            try:
                self._ring.remove(camera)
            except ValueError:
                pass


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
        per_camera = max_queue_per_camera if max_queue_per_camera is not None else max(1, max_queue // 4)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._process = process
        self._on_batch = on_batch
        from teacher_server.scheduling import make_queue  # the policies build on FairQueue

        #: Who is served first when frames wait: fair (round-robin) or need (teacher_server.scheduling).
        self.policy = policy
        self._queue = make_queue(policy, max_queue, min(per_camera, max_queue))
        self._cond = threading.Condition()
        self._accepting = False
        self._stopping = False
        self._busy = 0
        self._batch_seconds = 0.0  # moving average of one batch's compute time
        #: Refuse what cannot finish by its deadline and size batches to deadlines (teacher_server.admission).
        self.deadline_admission = deadline_admission
        self._times = ServiceTimes()
        self._running: Optional[tuple[float, int]] = None  # (start, size) of the batch being computed
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

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
    def submit(self, camera_id: str, payload: Any, deadline: Optional[float] = None, need: Optional[Any] = None) -> Job:
        """Queue one job; raises QueueFull (with a retry-after hint) or ShuttingDown."""
        job = Job(camera_id=camera_id, payload=payload, deadline=deadline, need=need)
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the teacher is shutting down; try another server or retry later")
            if self.deadline_admission and deadline is not None:
                self._admit_locked(job)
            try:
                evicted = self._queue.put(job)
            except QueueFull as exc:
                self.stats.rejected += 1
                raise QueueFull(str(exc), self._retry_after_locked()) from None
            self.stats.submitted += 1
            if evicted is not None:
                self.stats.evicted += 1
            retry = self._retry_after_locked()
            self._cond.notify_all()
        if evicted is not None:
            _fail(evicted, QueueFull(f"teacher queue is full; camera {evicted.camera_id!r} sends faster than its share", retry))
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

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def retry_after_s(self) -> float:
        with self._cond:
            return self._retry_after_locked()

    def _admit_locked(self, job: Job) -> None:
        """Refuse `job` (QueueFull with a retry-after hint) if it would be answered after its deadline."""
        now = time.monotonic()
        running_left = 0.0
        if self._running is not None:
            started, size = self._running
            running_left = max(0.0, started + (self._times.estimate(size) or 0.0) - now)
        wait = wait_estimate(self._times, self._queue.ahead_of(job.camera_id), self.max_batch, running_left, self.max_delay_s)
        if wait is None or now + wait <= job.deadline:
            return
        self.stats.rejected += 1
        self.stats.refused_late += 1
        remaining = job.deadline - now
        raise QueueFull(
            f"the teacher cannot answer within this request's deadline ({remaining * 1e3:.0f} ms left, "
            f"about {wait * 1e3:.0f} ms of work ahead); resend later or with a longer deadline",
            max(0.05, wait - max(0.0, remaining)),
        )

    def _retry_after_locked(self) -> float:
        """How long until the queue has room: batches ahead times their recent cost."""
        per_batch = self._batch_seconds or 0.1
        batches_ahead = len(self._queue) / self.max_batch + 1
        return max(0.05, per_batch * batches_ahead)

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
                    self._compute_one(job)
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
            self._times.observe(len(batch), elapsed)
            self._batch_seconds = elapsed if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * elapsed
        # Answer first: a failing metrics hook must never leave a request unanswered.
        for job, result in zip(batch, results):
            _resolve(job, result)
        self._notify_batch(len(batch), elapsed)

    def _compute_one(self, job: Job) -> None:
        job.batch_size = 1
        start = time.monotonic()
        try:
            result = list(self._process([job.payload]))[0]
        except Exception as exc:  # noqa: BLE001
            log.exception("teacher failed on a frame from camera %r", job.camera_id)
            with self._cond:
                self.stats.failed += 1
            job.future.set_exception(exc)
            return
        elapsed = time.monotonic() - start
        with self._cond:
            self.stats.computed += 1
            self.stats.batches += 1
            self.stats.busy_s += elapsed
            self._times.observe(1, elapsed)
        _resolve(job, result)
        self._notify_batch(1, elapsed)

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
