"""How often one camera may knock: a token bucket each, and retry hints that grow for callers that ignore them.

A refusal is only cheap if the caller stops asking. A camera that honours the
server's `retry-after-ms` hint costs one refusal per hint; one that resends at
once (a bug, or a flood) would otherwise make the server spend on refusals what
it should spend on frames. So the hint is a promise the server keeps track of:

- a hint given because the camera was over its own share (its calls, its
  streams, its queued frames, its bucket) is binding: a call that arrives
  before it expired is refused at the door (before decoding, before any limit
  is counted) and the hint doubles, up to `max_hint_s`; each such call is a
  strike. (A hint given because the whole server is busy, or because a frame's
  deadline cannot be met, is advice: an agent's next frame may come sooner
  with its own deadline, and is judged on its own.);
- a camera with strikes is on probation: the limiter lets it hold one call at a
  time; every call that comes on time takes one strike off;
- from the `hold_after`-th strike on, the refusal itself is held back for a
  while (`max_hold_s`, within bounded slots): a caller that resends the moment
  it hears no then asks a few times per second instead of thousands;
- the bucket (`rate` calls per second, `burst` at once) bounds how many calls
  of one camera reach the rest of the server at all, bad ones included.

Plain object, no locking of its own: CallLimiter calls it under its lock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

#: A call this much before its hint expired still counts as on time (clocks, the network).
GRACE_S = 0.02


class Refusal(Exception):
    """Not now: retry after `retry_after_s`; if `hold_s` > 0 hold the answer that long first, then release_hold()."""

    def __init__(self, message: str, retry_after_s: float, hold_s: float = 0.0, early: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.hold_s = hold_s
        self.early = early


@dataclass
class _Pace:
    tokens: float
    stamp: float  # when `tokens` was counted
    seen: float  # last call or frame
    not_before: float = -math.inf
    hint: float = 0.0
    strikes: int = 0
    held: int = 0


class Pacer:
    """Per-camera bucket, hint and strikes (see the module docstring)."""

    def __init__(self, *, rate: Optional[float] = 20.0, burst: int = 40, min_hint_s: float = 0.05,
                 max_hint_s: float = 8.0, max_strikes: int = 8, hold_after: int = 2, max_hold_s: float = 1.0,
                 max_held: int = 128, max_held_per_camera: int = 64) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 calls/s (or None for no bucket), got {rate}")
        if burst < 1 or max_hint_s < min_hint_s or max_strikes < 1 or hold_after < 1 or max_hold_s < 0:
            raise ValueError("pacing needs burst >= 1, max_hint_s >= min_hint_s, max_strikes >= 1, hold_after >= 1, max_hold_s >= 0")
        self.rate, self.burst = rate, burst
        self.min_hint_s, self.max_hint_s = min_hint_s, max_hint_s
        self.max_strikes, self.hold_after, self.max_hold_s = max_strikes, hold_after, max_hold_s
        self.max_held, self.max_held_per_camera = max_held, max_held_per_camera
        self._paces: dict[str, _Pace] = {}
        self.held = 0
        #: Calls refused at the door since start: before their hint expired, and by the bucket.
        self.early = 0
        self.bucket = 0

    def _pace(self, camera: str, now: float) -> _Pace:
        pace = self._paces.get(camera)
        if pace is None:
            pace = self._paces[camera] = _Pace(tokens=float(self.burst), stamp=now, seen=now)
        return pace

    def knock(self, camera: str, now: float) -> None:
        """A call (or a stream's frame) of `camera` arrives: pass, or raise Refusal."""
        pace = self._pace(camera, now)
        pace.seen = now
        if now < pace.not_before - GRACE_S:
            self.early += 1
            pace.strikes = min(self.max_strikes, pace.strikes + 1)
            pace.hint = min(self.max_hint_s, max(pace.hint, self.min_hint_s) * 2)
            pace.not_before = now + pace.hint
            hold = 0.0
            if (pace.strikes >= self.hold_after and self.max_hold_s > 0 and self.held < self.max_held
                    and pace.held < self.max_held_per_camera):
                hold = min(self.max_hold_s, pace.hint / 2)
                pace.held += 1
                self.held += 1
            raise Refusal(f"this camera called again before its retry-after hint expired; wait {pace.hint:.1f} s "
                          "(the hint doubles each time it is ignored)", pace.hint, hold, early=True)
        if pace.strikes and now >= pace.not_before:
            pace.strikes -= 1
        if self.rate is not None:
            pace.tokens = min(float(self.burst), pace.tokens + (now - pace.stamp) * self.rate)
            pace.stamp = now
            if pace.tokens < 1.0:
                self.bucket += 1
                wait = max(self.min_hint_s, (1.0 - pace.tokens) / self.rate)
                self.refused(camera, wait, now)
                raise Refusal(f"this camera sends more than {self.rate:g} calls or frames per second; "
                              f"retry after {pace.hint:.2f} s", pace.hint)
            pace.tokens -= 1.0

    def refused(self, camera: str, retry_after_s: float, now: float) -> float:
        """A limit or the queue said no with `retry_after_s`: the hint to send (kept grown while on probation)."""
        pace = self._pace(camera, now)
        hint = max(self.min_hint_s, retry_after_s)
        if pace.strikes:
            hint = min(self.max_hint_s, max(hint, pace.hint))
        pace.hint = hint
        pace.not_before = max(pace.not_before, now + hint)
        return hint

    def touch(self, camera: str, now: float) -> None:
        """The camera's call ended now: it counts as seen (it is forgotten only after a quiet while from here)."""
        pace = self._paces.get(camera)
        if pace is not None:
            pace.seen = max(pace.seen, now)

    def on_probation(self, camera: str) -> bool:
        pace = self._paces.get(camera)
        return pace is not None and pace.strikes > 0

    def release_hold(self, camera: str) -> None:
        pace = self._paces.get(camera)
        if pace is not None and pace.held > 0:
            pace.held -= 1
        self.held = max(0, self.held - 1)

    def forget(self, now: float, idle_s: float, busy: Iterable[str]) -> list[str]:
        """Drop cameras not seen for `idle_s` whose hint has expired and that hold nothing; return them."""
        keep = set(busy)
        gone = [c for c, p in self._paces.items()
                if c not in keep and not p.held and now - p.seen >= idle_s and now >= p.not_before]
        for camera in gone:
            del self._paces[camera]
        return gone

    def __len__(self) -> int:
        return len(self._paces)
