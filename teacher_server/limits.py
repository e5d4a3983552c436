"""Who may hold what on the server at once: calls, streams and frame bytes, per camera and in total.

gRPC's own `maximum_concurrent_rpcs` is one pool for every caller: once it is
full, everyone (a camera with a valid token included) gets gRPC's bare
"Concurrent RPC limit exceeded!" with no hint of when to come back. These
limits sit below it, so the server is the one that says no: an over-limit
caller gets RESOURCE_EXHAUSTED with a retry-after hint while the pool still
has room for every other camera's calls, and one camera's share is bounded
whatever it sends.

A call is counted against its camera when it OPENS (`open`): with tokens the
camera is the token's, known before the first message, so a camera's streams
that never send a frame still count against that camera's own share, never
against the others'. A camera's share is checked before the server-wide
count, and the last `reserved_for_new` server-wide slots only go to named
cameras that hold nothing, so neither cameras already at work nor anonymous
streams can take every slot.
Pacing (teacher_server.pacing) runs first: a camera that ignores its hints is
refused at the door.

Plain objects, thread-safe, no gRPC: the servicer asks, the tests can too.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from teacher_server.pacing import Pacer, Refusal


class LimitExceeded(Exception):
    """Over a limit; come back after `retry_after_s` seconds.

    When `hold_s` > 0 the caller ignored earlier hints: hold the refusal that
    long before sending it, then call `release()` (CallLimiter.release_hold).
    """

    def __init__(self, message: str, retry_after_s: float, hold_s: float = 0.0, kind: str = "",
                 release: Optional[Callable[[], None]] = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.hold_s = hold_s
        self.kind = kind
        self._release = release

    def release(self) -> None:
        """Give back the hold slot (once; a no-op when nothing is held)."""
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass(frozen=True)
class CallLimits:
    """The bounds; None turns one off."""

    #: Calls (unary and streams) held at once by all cameras together; keep it below gRPC's maximum_concurrent_rpcs.
    max_calls: Optional[int] = 240
    #: Calls one camera may hold at once (each open stream counts as one).
    max_calls_per_camera: Optional[int] = 16
    #: Streams one camera may keep open at once.
    max_streams_per_camera: Optional[int] = 2
    #: Bytes of decoded frames held at once (decoding, queued, being computed).
    max_frame_bytes: Optional[int] = 1024 * 1024 * 1024
    #: Retry-after hint when a call or stream limit refuses (calls end as soon as their frames do).
    retry_after_s: float = 0.5
    #: Server-wide slots only a named camera holding no call may take (None: max_calls // 8); streams whose
    #: camera is not known yet (no tokens) cannot take them either.
    reserved_for_new: Optional[int] = None
    #: Calls plus stream frames per second one camera may send (token bucket; None = no bucket) and at once.
    rate_per_camera: Optional[float] = 20.0
    burst_per_camera: int = 40
    #: The longest hint a camera that ignores hints is given (they double up to it).
    max_retry_after_s: float = 8.0
    #: Refusals held back from cameras that ignore hints: at most this long each, this many at once (in
    #: total and per camera). They take gRPC call slots beyond max_calls (the server adds them to gRPC's limit).
    max_hold_s: float = 1.0
    max_held: int = 128
    max_held_per_camera: int = 64
    #: A camera whose last call ended this long ago and that sent nothing since is forgotten (its pacing, its
    #: queue-policy state).
    forget_after_s: float = 30.0


class Ticket:
    """One open call or stream, counted against the server and (once known) its camera; release() gives it back."""

    def __init__(self, limiter: "CallLimiter", camera_id: Optional[str], stream: bool) -> None:
        self._limiter, self.camera_id, self.stream = limiter, camera_id, stream
        self._released = False

    def bind(self, camera_id: str) -> None:
        """A stream opened before its camera was known (no tokens) now names it: count it against that camera."""
        if self.camera_id is not None:
            return
        self._limiter._bind(self, camera_id)

    def release(self) -> None:
        """Give everything back (once; later calls do nothing)."""
        self._limiter._release(self)


class CallLimiter:
    """Calls, streams and frame bytes held, per camera and in total, behind each camera's pacing."""

    def __init__(self, limits: CallLimits = CallLimits(), *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._calls = 0
        self._per_camera: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        self._frame_bytes = 0
        self._pacer = Pacer(rate=limits.rate_per_camera, burst=limits.burst_per_camera,
                            min_hint_s=min(0.05, limits.retry_after_s), max_hint_s=max(limits.max_retry_after_s, limits.retry_after_s),
                            max_hold_s=limits.max_hold_s, max_held=limits.max_held,
                            max_held_per_camera=limits.max_held_per_camera)
        self._swept_at = clock()
        #: Refusals since start, by limit (for tests and logs).
        self.refused: dict[str, int] = {}

    @property
    def reserved(self) -> int:
        cap = self.limits.max_calls
        if cap is None:
            return 0
        return self.limits.reserved_for_new if self.limits.reserved_for_new is not None else cap // 8

    # -- opening -------------------------------------------------------------------------
    def open(self, camera_id: Optional[str], *, stream: bool = False) -> Ticket:
        """A call (or stream) opens for `camera_id` (None: not known yet, only the server-wide count applies).

        Raises LimitExceeded with a hint, after the camera's pacing, its own share, then the server's.
        """
        with self._lock:
            now = self._clock()
            if camera_id is not None:
                self._knock(camera_id, now)
                self._check_camera(camera_id, stream, now)
            cap = self.limits.max_calls
            if cap is not None:
                newcomer = camera_id is not None and not self._per_camera.get(camera_id, 0)
                room = cap if newcomer else cap - self.reserved
                if self._calls >= room:
                    detail = "" if self._calls >= cap else f" (the last {self.reserved} are kept for cameras holding none)"
                    raise self._refuse("calls", camera_id, now, f"the teacher is handling its limit of {cap} calls"
                                       f"{detail}; retry later")
            self._calls += 1
            if camera_id is not None:
                self._take_camera(camera_id, stream)
            return Ticket(self, camera_id, stream)

    def frame(self, camera_id: str) -> None:
        """A stream's frame of `camera_id` arrives: its pacing (bucket, hints) decides; raises LimitExceeded."""
        with self._lock:
            self._knock(camera_id, self._clock())

    def hint(self, camera_id: Optional[str], retry_after_s: float) -> float:
        """A later stage (the queue) refused `camera_id` for being over its own share: the hint to send, grown if it
        ignores them; its next call before the hint expires is refused at the door."""
        if camera_id is None:
            return retry_after_s
        with self._lock:
            return self._pacer.refused(camera_id, retry_after_s, self._clock())

    def release_hold(self, camera_id: str) -> None:
        with self._lock:
            self._pacer.release_hold(camera_id)

    def _knock(self, camera_id: str, now: float) -> None:
        try:
            self._pacer.knock(camera_id, now)
        except Refusal as exc:
            kind = "early" if exc.early else "rate"
            self.refused[kind] = self.refused.get(kind, 0) + 1
            release = (lambda: self.release_hold(camera_id)) if exc.hold_s > 0 else None
            raise LimitExceeded(str(exc), exc.retry_after_s, exc.hold_s, kind, release) from None

    def _check_camera(self, camera_id: str, stream: bool, now: float) -> None:
        held = self._per_camera.get(camera_id, 0)
        cap = self.limits.max_calls_per_camera
        if self._pacer.on_probation(camera_id):
            cap = 1 if cap is None else min(cap, 1)
        if cap is not None and held >= cap:
            raise self._refuse("camera_calls", camera_id, now,
                               f"this camera already holds {held} calls (limit {cap}); wait for answers before sending more")
        if stream:
            streams = self._streams.get(camera_id, 0)
            scap = self.limits.max_streams_per_camera
            if scap is not None and streams >= scap:
                raise self._refuse("camera_streams", camera_id, now,
                                   f"this camera already has {streams} open streams (limit {scap}); reuse one")

    def _take_camera(self, camera_id: str, stream: bool) -> None:
        self._per_camera[camera_id] = self._per_camera.get(camera_id, 0) + 1
        if stream:
            self._streams[camera_id] = self._streams.get(camera_id, 0) + 1

    def _refuse(self, kind: str, camera_id: Optional[str], now: float, message: str) -> LimitExceeded:
        """Over a limit. Over its own share, the camera's pacing holds it to the hint; the server being full is advice."""
        self.refused[kind] = self.refused.get(kind, 0) + 1
        hint = self.limits.retry_after_s
        if camera_id is not None and kind.startswith("camera_"):
            hint = self._pacer.refused(camera_id, hint, now)
        return LimitExceeded(message, hint, kind=kind)

    def _bind(self, ticket: Ticket, camera_id: str) -> None:
        with self._lock:
            if ticket._released:
                return
            now = self._clock()
            self._check_camera(camera_id, ticket.stream, now)
            self._take_camera(camera_id, ticket.stream)
            ticket.camera_id = camera_id

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
            self._calls = max(0, self._calls - 1)
            if ticket.camera_id is not None:
                _decrement(self._per_camera, ticket.camera_id)
                if ticket.stream:
                    _decrement(self._streams, ticket.camera_id)
                self._pacer.touch(ticket.camera_id, self._clock())

    # -- frame memory --------------------------------------------------------------------
    def acquire_bytes(self, nbytes: int) -> None:
        """Reserve memory for one decoded frame before decoding it."""
        with self._lock:
            cap = self.limits.max_frame_bytes
            if cap is not None and self._frame_bytes + nbytes > cap:
                self.refused["frame_bytes"] = self.refused.get("frame_bytes", 0) + 1
                raise LimitExceeded(
                    f"the teacher holds {self._frame_bytes >> 20} MiB of frames (limit {cap >> 20} MiB); retry later",
                    self.limits.retry_after_s, kind="frame_bytes")
            self._frame_bytes += nbytes

    def release_bytes(self, nbytes: int) -> None:
        with self._lock:
            self._frame_bytes = max(0, self._frame_bytes - nbytes)

    # -- forgetting ------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Cameras that held nothing and sent nothing for `forget_after_s`, now forgotten here; the caller
        forgets them elsewhere too (the queue policy). Cheap to call often: it looks at most every quarter period."""
        with self._lock:
            now = self._clock()
            if now - self._swept_at < self.limits.forget_after_s / 4:
                return []
            self._swept_at = now
            return self._pacer.forget(now, self.limits.forget_after_s, self._per_camera)

    # -- reading ---------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    @property
    def frame_bytes(self) -> int:
        with self._lock:
            return self._frame_bytes

    @property
    def held(self) -> int:
        """Refusals being held back right now."""
        with self._lock:
            return self._pacer.held

    def refusals(self) -> dict[str, int]:
        """A copy of `refused` (refusals since start, by kind), safe to read while calls come in."""
        with self._lock:
            return dict(self.refused)

    def camera_calls(self, camera_id: str) -> int:
        with self._lock:
            return self._per_camera.get(camera_id, 0)

    def cameras_known(self) -> int:
        """Cameras whose pacing is remembered (bounded by sweep)."""
        with self._lock:
            return len(self._pacer)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
