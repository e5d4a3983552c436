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

Plain functions and one small class; the DynamicBatcher calls them under its lock.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

#: Added to every estimate: decoding the answer, the response and the network are not in a batch's time.
HEADROOM_S = 0.02


class ServiceTimes:
    """Seconds one batch takes, by batch size: a moving average of what was measured plus its mean
    deviation (as TCP estimates round trips), so a machine whose speed varies is not over-promised."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._mean: dict[int, float] = {}
        self._dev: dict[int, float] = {}
        self._seconds: dict[int, float] = {}

    def observe(self, size: int, seconds: float) -> None:
        old = self._mean.get(size)
        if old is None:
            self._mean[size], self._dev[size] = seconds, 0.0
        else:
            self._dev[size] = (1 - self.alpha) * self._dev[size] + self.alpha * abs(seconds - old)
            self._mean[size] = (1 - self.alpha) * old + self.alpha * seconds
        self._seconds[size] = self._mean[size] + self._dev[size]

    def estimate(self, size: int) -> Optional[float]:
        """Expected seconds for a batch of `size`; None before anything was measured.

        An unmeasured size is bounded from what was: by a larger batch's time (a
        smaller batch costs no more), else by scaling the largest smaller one by size.
        """
        if size in self._seconds:
            return self._seconds[size]
        if not self._seconds:
            return None
        above = [k for k in self._seconds if k > size]
        if above:
            return self._seconds[min(above)]
        below = max(self._seconds)
        return self._seconds[below] * size / below

    def __bool__(self) -> bool:
        return bool(self._seconds)


def wait_estimate(times: ServiceTimes, ahead: int, max_batch: int, running_left_s: float, delay_s: float) -> Optional[float]:
    """Seconds until a frame with `ahead` frames served before it is answered (None: nothing measured yet)."""
    position = ahead + 1
    batches = math.ceil(position / max_batch)
    full = times.estimate(max_batch)
    last = times.estimate(position - (batches - 1) * max_batch)
    if full is None or last is None:
        return None
    window = delay_s if position < max_batch else 0.0
    return running_left_s + (batches - 1) * full + last + window + HEADROOM_S


def plan_batch(jobs: Sequence[Any], now: float, times: ServiceTimes) -> tuple[list[Any], list[Any], list[Any]]:
    """Split jobs (in serving order) into (batch to run now, too late even alone, back to the queue).

    The batch is the longest prefix whose estimated time ends before the
    earliest deadline in it; jobs without a deadline never shorten it.
    """
    if not times:
        return list(jobs), [], []
    alone = times.estimate(1) or 0.0
    late = [j for j in jobs if j.deadline is not None and now + alone + HEADROOM_S > j.deadline]
    live = [j for j in jobs if not (j.deadline is not None and now + alone + HEADROOM_S > j.deadline)]
    size = len(live)
    while size > 1:
        deadlines = [j.deadline for j in live[:size] if j.deadline is not None]
        if not deadlines or now + (times.estimate(size) or 0.0) + HEADROOM_S <= min(deadlines):
            break
        size -= 1
    return live[:size], late, live[size:]
