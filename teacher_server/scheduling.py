"""Who the teacher serves next when it cannot serve everyone: queue policies.

``fair`` (FairQueue, this file) gives every camera an equal turn whatever its
student needs. ``need`` (NeedQueue, this file) spends the teacher where it buys
accuracy: among the cameras waiting, the one whose student is furthest below
its threshold goes first. Three rules keep that honest:

- aging: a request that has waited ``max_wait_s`` goes before any other
  (oldest first), so a camera whose student is doing well still gets answers;
- share: only a camera's oldest request competes on need, and a request sent
  sooner than the camera's own stride says ranks behind every on-time one:
  flooding buys no more than the camera's turn. Algorithm 1 asks at multiples
  of the stride, so right after a doubling the gap can be half the new stride;
  only a gap below half the stride counts as flooding;
- stretch: when a request has waited a large part of the camera's interval
  between requests, its answer asks the camera to stretch its next interval
  (``stride_stretch``), so demand falls to what the teacher can serve instead of
  requests piling up or failing; only students at or above their threshold (or
  agents that send no need) are stretched.

Both queues have the same interface and are driven by the times they are
given (jobs' ``enqueued_at`` and ``now``), never by a clock of their own, so a
simulation in video time (bench/fleet.py) runs the very same code.
"""
from __future__ import annotations

import collections
from typing import Any, Optional, Sequence

from core.need import NeedSignal
from teacher_server.jobs import Job, QueueFull

POLICIES = ("fair", "need")


def need_from_request(request: Any) -> Optional[NeedSignal]:
    """The NeedSignal a LabelRequest carries, or None when an older agent sent none."""
    if not request.HasField("need"):
        return None
    n = request.need
    return NeedSignal(
        accuracy=float(n.accuracy) if n.HasField("accuracy") else None,
        threshold=float(n.threshold),
        failed=bool(n.failed),
        stride=int(n.stride),
        frames_since_teacher=int(n.frames_since_teacher),
    )


class FairQueue:
    """Per-camera FIFO queues served round-robin, bounded in total and per camera.

    Not thread-safe on its own: DynamicBatcher holds its lock around every call.
    Subclasses change only who goes next (`_next`) and what a served job is told
    (`_serving`); dropping cancelled and expired jobs is done here, once.
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

    def check(self, camera_id: str) -> None:
        """Raise QueueFull (no hint yet) if a new job of `camera_id` could not get in now."""
        own = self.depth(camera_id)
        if own >= self.max_per_camera:
            raise QueueFull(f"camera {camera_id!r} already has {own} frames queued (limit {self.max_per_camera})", 0.0,
                            own=True)
        if self._total >= self.max_total:
            busiest = max(self._queues, key=lambda c: len(self._queues[c]))
            if len(self._queues[busiest]) <= own + 1:
                raise QueueFull(f"teacher queue is full ({self._total} frames)", 0.0)

    def put(self, job: Job) -> Optional[Job]:
        """Admit `job`; returns a job pushed out to make room, or raises QueueFull.

        When the queue is full, a camera holding fewer jobs than the busiest
        one still gets in: the busiest camera's newest job is pushed out.
        """
        self.check(job.camera_id)
        evicted = None
        if self._total >= self.max_total:
            busiest = max(self._queues, key=lambda c: len(self._queues[c]))
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
        """Up to max_size live jobs in the policy's order; plus the expired ones, dropped."""
        batch: list[Job] = []
        expired: list[Job] = []
        while self._total and len(batch) < max_size:
            job = self._next(now)
            if job.future.cancelled():
                continue
            if job.deadline is not None and job.deadline <= now:
                expired.append(job)
                continue
            self._serving(job, now)
            batch.append(job)
        return batch, expired

    def _next(self, now: float) -> Job:
        """Take the next job off its queue: the head of the next camera in turn."""
        camera = self._ring.popleft()
        q = self._queues[camera]
        job = q.popleft()
        self._total -= 1
        if q:
            self._ring.append(camera)
        else:
            del self._queues[camera]
        return job

    def _serving(self, job: Job, now: float) -> None:
        """`job` goes into the batch now (the need policy sets its stretch hint here)."""

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

    def forget_camera(self, camera: str) -> None:
        """Drop what is remembered of a camera that has gone (round-robin keeps nothing beyond its queue)."""

    def remembered(self) -> int:
        """Cameras the policy keeps state for beyond their queued jobs (bounded by forget_camera)."""
        return 0

    def _forget_if_empty(self, camera: str) -> None:
        if not self._queues.get(camera):
            self._queues.pop(camera, None)
            try:
                self._ring.remove(camera)
            except ValueError:
                pass


class NeedQueue(FairQueue):
    """Per-camera FIFO queues; the camera furthest below its threshold is served first.

    Not thread-safe on its own (DynamicBatcher holds its lock around every call).
    Admission, bounds and eviction are FairQueue's; only the serving order and
    the stretch hint differ.
    """

    def __init__(self, max_total: int, max_per_camera: int, *, max_wait_s: float = 2.0,
                 max_stretch: float = 4.0, min_wait_fraction: float = 0.1) -> None:
        super().__init__(max_total, max_per_camera)
        if max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be > 0, got {max_wait_s}")
        if max_stretch < 1:
            raise ValueError(f"max_stretch must be >= 1, got {max_stretch}")
        self.max_wait_s = float(max_wait_s)
        self.max_stretch = float(max_stretch)
        self.min_wait_fraction = float(min_wait_fraction)
        self._last_put: dict[str, float] = {}
        #: Smoothed seconds between a camera's requests (what its stride means in time).
        self._interval: dict[str, float] = {}

    def put(self, job: Job) -> Optional[Job]:
        evicted = super().put(job)
        camera = job.camera_id
        last = self._last_put.get(camera)
        if last is not None and job.enqueued_at > last:
            gap = job.enqueued_at - last
            old = self._interval.get(camera)
            self._interval[camera] = gap if old is None else 0.7 * old + 0.3 * gap
        self._last_put[camera] = job.enqueued_at
        return evicted

    # -- serving order -------------------------------------------------------------------
    @staticmethod
    def early(job: Job) -> bool:
        """Sent sooner than the camera's own stride allows (flooding): under half a stride since its last teacher frame."""
        need = job.need
        return need is not None and need.frames_since_teacher > 0 and 2 * need.frames_since_teacher < need.stride

    def _rank(self, heads: list[Job], now: float) -> list[Job]:
        """Heads in serving order: overdue oldest first, then on-time by need, then early ones by age."""
        known = [j.need.deficit for j in heads if j.need is not None]
        average = sum(known) / len(known) if known else 0.0

        def key(job: Job) -> tuple:
            waited = now - job.enqueued_at
            if waited >= self.max_wait_s:
                return (0, -waited)
            if self.early(job):
                return (2, job.enqueued_at)
            need = job.need
            deficit = need.deficit if need is not None else average
            overdue = (need.frames_since_teacher / need.stride) if need is not None and need.stride else 1.0
            return (1, -deficit, -overdue, job.enqueued_at)

        return sorted(heads, key=key)

    def _next(self, now: float) -> Job:
        heads = [q[0] for q in self._queues.values() if q]
        job = self._rank(heads, now)[0]
        self._queues[job.camera_id].popleft()
        self._total -= 1
        self._forget_if_empty(job.camera_id)
        return job

    def _serving(self, job: Job, now: float) -> None:
        job.stride_stretch = self.stretch_for(job, now)

    def stretch_for(self, job: Job, now: float) -> float:
        """How much longer the camera should wait before its next request (1 = as its stride says).

        A request that waited w seconds from a camera asking every I seconds
        says the teacher serves that camera about once per I + w: asking at that
        pace keeps its share without queueing. A student below its threshold is
        never told to wait longer: it is the one the teacher's time is for.
        """
        if job.need is not None and job.need.deficit > 0:
            return 1.0
        interval = self._interval.get(job.camera_id)
        waited = now - job.enqueued_at
        if interval is None or interval <= 0 or waited <= self.min_wait_fraction * interval:
            return 1.0
        return min(self.max_stretch, 1.0 + waited / interval)

    def forget_camera(self, camera: str) -> None:
        """Drop what is remembered of a camera's pace (it has been gone a while; the server calls this)."""
        self._last_put.pop(camera, None)
        self._interval.pop(camera, None)

    def remembered(self) -> int:
        return len(self._last_put)


#: Frames one camera may have waiting unless told otherwise: a camera asks one frame at a time; a few more
#: cover a stream or a retry, and more only let one camera's backlog take turns from the others.
DEFAULT_CAMERA_SHARE = 4


def camera_share(max_queue: int, max_queue_per_camera: Optional[int] = None) -> int:
    """Frames one camera may have waiting: the setting, else DEFAULT_CAMERA_SHARE (at most a quarter of the queue)."""
    if max_queue_per_camera is not None:
        return max(1, min(max_queue_per_camera, max_queue))
    return max(1, min(DEFAULT_CAMERA_SHARE, max_queue // 4))


def make_queue(policy: str, max_total: int, max_per_camera: int, **options: Any) -> FairQueue:
    """The queue of a policy name (``fair`` | ``need``); options go to NeedQueue."""
    if policy == "fair":
        return FairQueue(max_total, max_per_camera)
    if policy == "need":
        return NeedQueue(max_total, max_per_camera, **options)
    raise ValueError(f"unknown queue policy {policy!r}; use one of {', '.join(POLICIES)}")

