"""Take only the work that can be answered in time: service-time estimates and batch plans.

Under overload a queue that admits everything it has room for answers nobody:
the model spends its time on frames whose callers have already given up.
Goodput (answers delivered within their deadline) needs two rules, both driven
by the time batches really took on this machine:

- admission: a frame whose wait (the batch running now, the batches ahead of
  it in serving order, its own) would end after its deadline is refused at
  once, with a hint of when the queue will have room, instead of being
  computed and then thrown away;
- batch plan: a batch never starts if it would outlast the earliest deadline
  inside it; it is cut down (the rest waits for the next one), and a frame that
  could not finish even alone is dropped before it costs model time.

An estimate that only admitted frames can correct may never be corrected: after
one slow batch (the process paused, the machine was busy) a server that
believes a frame takes too long refuses every frame and so never measures
again. Three rules keep the estimate honest:

- it ages: while the server measures nothing (it is refusing everything), each
  batch size's estimate decays toward the best of its recent measurements (one
  stall is forgotten in seconds);
- a batch size never measured is interpolated from its measured neighbours
  (proportionally below the smallest), not given a larger batch's whole time;
- an idle server that has refused everything for `probe_after_s` admits one
  frame anyway (a probe), so it measures again and answers what it can.

Plain objects, no gRPC: the DynamicBatcher calls them under its lock, the Ray
ingress's queue can too.
"""
from __future__ import annotations

import bisect
import collections
import math
import time
from typing import Any, Callable, Optional, Sequence

#: Added to every estimate: decoding the answer, the response and the network are not in a batch's time.
HEADROOM_S = 0.02


class ServiceTimes:
    """Seconds one batch takes, by batch size.

    Each measured size keeps a moving average plus its mean deviation (as TCP
    estimates round trips, so a machine whose speed varies is not
    over-promised) and its last `recent` measurements. While the server
    measures nothing (see _decay) the estimates age: the part of each above its
    best recent measurement shrinks by e every `age_s` seconds.
    """

    def __init__(self, alpha: float = 0.3, *, age_s: float = 2.0, grace_s: float = 1.0, recent: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < alpha <= 1.0 or age_s <= 0 or grace_s < 0 or recent < 1:
            raise ValueError("alpha must be in (0, 1], age_s > 0, grace_s >= 0 and recent >= 1")
        self.alpha, self.age_s, self.grace_s, self._clock = alpha, age_s, grace_s, clock
        self._recent_n = recent
        self._mean: dict[int, float] = {}
        self._dev: dict[int, float] = {}
        self._recent: dict[int, collections.deque[float]] = {}
        self._sizes: list[int] = []  # measured sizes, sorted
        self._last = -math.inf  # when the last batch (of any size) was measured
        self._last_seconds = 0.0  # and how long it took

    def _decay(self, now: float) -> float:
        """How much of each estimate's excess over its best recent measurement is left after this idle time.

        Idle means no batch measured for max(grace_s, twice the last batch's
        time): a busy server does not age (its moving averages follow the
        machine); one that computes nothing (it refuses everything) does.
        """
        idle = now - self._last - max(self.grace_s, 2.0 * self._last_seconds)
        return 1.0 if idle <= 0 else math.exp(-idle / self.age_s)

    def observe(self, size: int, seconds: float, now: Optional[float] = None) -> None:
        now = self._clock() if now is None else now
        # Keep what the estimates have aged to, so a forgotten stall does not come back with this measurement.
        decay = self._decay(now)
        if decay < 1.0:
            for known in self._sizes:
                best = min(self._recent[known])
                if self._mean[known] > best:
                    self._mean[known] = best + (self._mean[known] - best) * decay
                self._dev[known] *= decay
        if size not in self._mean:
            self._mean[size], self._dev[size] = seconds, 0.0
            self._recent[size] = collections.deque(maxlen=self._recent_n)
            bisect.insort(self._sizes, size)
        else:
            mean = self._mean[size]
            self._dev[size] = (1 - self.alpha) * self._dev[size] + self.alpha * abs(seconds - mean)
            self._mean[size] = (1 - self.alpha) * mean + self.alpha * seconds
        self._recent[size].append(seconds)
        self._last, self._last_seconds = now, seconds

    def _measured(self, size: int, now: float) -> float:
        best = min(self._recent[size])
        full = self._mean[size] + self._dev[size]
        return full if full <= best else best + (full - best) * self._decay(now)

    def estimate(self, size: int, now: Optional[float] = None) -> Optional[float]:
        """Expected seconds for a batch of `size`; None before anything was measured.

        An unmeasured size is interpolated between the nearest measured sizes
        around it, scaled down proportionally below the smallest measured one
        and up above the largest.
        """
        if not self._sizes:
            return None
        now = self._clock() if now is None else now
        if size in self._mean:
            return self._measured(size, now)
        i = bisect.bisect_left(self._sizes, size)
        if i == 0:
            above = self._sizes[0]
            return self._measured(above, now) * size / above
        below = self._sizes[i - 1]
        if i == len(self._sizes):
            return self._measured(below, now) * size / below
        above = self._sizes[i]
        lo, hi = self._measured(below, now), self._measured(above, now)
        return lo + (hi - lo) * (size - below) / (above - below)

    def __bool__(self) -> bool:
        return bool(self._sizes)


def wait_estimate(times: ServiceTimes, ahead: int, max_batch: int, running_left_s: float, delay_s: float,
                  now: Optional[float] = None) -> Optional[float]:
    """Seconds until a frame with `ahead` frames served before it is answered (None: nothing measured yet)."""
    position = ahead + 1
    batches = math.ceil(position / max_batch)
    full = times.estimate(max_batch, now)
    last = times.estimate(position - (batches - 1) * max_batch, now)
    if full is None or last is None:
        return None
    window = delay_s if position < max_batch else 0.0
    return running_left_s + (batches - 1) * full + last + window + HEADROOM_S


def plan_batch(jobs: Sequence[Any], now: float, times: ServiceTimes) -> tuple[list[Any], list[Any], list[Any]]:
    """Split jobs (in serving order) into (batch to run now, too late even alone, back to the queue).

    The batch is the longest prefix whose estimated time ends before the
    earliest deadline in it; jobs without a deadline never shorten it, and a
    probe (Job.probe) is never dropped as too late: it is how a wrong estimate
    gets corrected.
    """
    if not times:
        return list(jobs), [], []
    alone = times.estimate(1, now) or 0.0

    def hopeless(job: Any) -> bool:
        return job.deadline is not None and not getattr(job, "probe", False) and now + alone + HEADROOM_S > job.deadline

    late = [j for j in jobs if hopeless(j)]
    live = [j for j in jobs if not hopeless(j)]
    size = len(live)
    while size > 1:
        deadlines = [j.deadline for j in live[:size] if j.deadline is not None and not getattr(j, "probe", False)]
        if not deadlines or now + (times.estimate(size, now) or 0.0) + HEADROOM_S <= min(deadlines):
            break
        size -= 1
    return live[:size], late, live[size:]


class TooLate(Exception):
    """The frame would be answered after its deadline; come back after `retry_after_s` (or with a longer deadline)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineAdmission:
    """Admit a frame only if the measured service time says it can be answered by its deadline.

    Not thread-safe on its own (the batcher holds its lock around it). `idle`
    means nothing runs and nothing waits: there, after `probe_after_s` of
    refusing everything, one frame is admitted whatever the estimate says.
    """

    def __init__(self, times: Optional[ServiceTimes] = None, *, max_batch: int, delay_s: float,
                 probe_after_s: float = 1.0) -> None:
        if max_batch < 1 or delay_s < 0 or probe_after_s <= 0:
            raise ValueError("max_batch must be >= 1, delay_s >= 0 and probe_after_s > 0")
        self.times = times if times is not None else ServiceTimes()
        self.max_batch, self.delay_s, self.probe_after_s = max_batch, delay_s, probe_after_s
        self._refusing_since: Optional[float] = None
        #: Frames admitted as probes since start.
        self.probes = 0

    def running_left(self, started: float, size: int, now: float) -> float:
        """Seconds the batch of `size` started at `started` still needs, by the estimate."""
        return max(0.0, started + (self.times.estimate(size, now) or 0.0) - now)

    def check(self, now: float, deadline: float, ahead: int, running_left_s: float, idle: bool) -> bool:
        """False: admit. True: admit as a probe (mark the job so no batch plan drops it). Raises TooLate."""
        wait = wait_estimate(self.times, ahead, self.max_batch, running_left_s, self.delay_s, now)
        if wait is None or now + wait <= deadline:
            self._refusing_since = None
            return False
        if self._refusing_since is None:
            self._refusing_since = now
        if idle and deadline > now and now - self._refusing_since >= self.probe_after_s:
            self._refusing_since = now  # the next probe only after another stretch of refusing
            self.probes += 1
            return True
        remaining = deadline - now
        raise TooLate(
            f"the teacher cannot answer within this request's deadline ({remaining * 1e3:.0f} ms left, "
            f"about {wait * 1e3:.0f} ms of work ahead); resend later or with a longer deadline",
            max(0.05, wait - max(0.0, remaining)),
        )

    def observe(self, size: int, seconds: float, now: Optional[float] = None) -> None:
        self.times.observe(size, seconds, now)
