"""Who may hold what on the server at once: calls, streams and frame bytes, per camera and in total.

gRPC's own `maximum_concurrent_rpcs` is one pool for every caller: once it is
full, everyone (a camera with a valid token included) gets gRPC's bare
"Concurrent RPC limit exceeded!" with no hint of when to come back. These
limits sit below it, so the server is the one that says no: an over-limit
caller gets RESOURCE_EXHAUSTED with a retry-after hint while the pool still
has room for every other camera's calls, and one camera's share is bounded
whatever it sends.

Plain objects, thread-safe, no gRPC: the servicer asks, the tests can too.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional


class LimitExceeded(Exception):
    """Over a limit; come back after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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


class CallLimiter:
    """Counts calls, streams and frame bytes held; `acquire_*` raise LimitExceeded, `release_*` give back."""

    def __init__(self, limits: CallLimits = CallLimits()) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._calls = 0
        self._per_camera: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        self._frame_bytes = 0
        #: Refusals since start, by limit (for tests and logs).
        self.refused: dict[str, int] = {}

    def _refuse(self, kind: str, message: str) -> LimitExceeded:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        return LimitExceeded(message, self.limits.retry_after_s)

    # -- calls ---------------------------------------------------------------------------
    def acquire_call(self) -> None:
        """One more call on the server (before its camera is known)."""
        with self._lock:
            cap = self.limits.max_calls
            if cap is not None and self._calls >= cap:
                raise self._refuse("calls", f"the teacher is handling its limit of {cap} calls; retry later")
            self._calls += 1

    def release_call(self) -> None:
        with self._lock:
            self._calls = max(0, self._calls - 1)

    def acquire_camera(self, camera_id: str, *, stream: bool = False) -> None:
        """The call (or stream) belongs to `camera_id`: count it against that camera's share."""
        with self._lock:
            held = self._per_camera.get(camera_id, 0)
            cap = self.limits.max_calls_per_camera
            if cap is not None and held >= cap:
                raise self._refuse("camera_calls", f"this camera already holds {held} calls (limit {cap}); wait for answers before sending more")
            if stream:
                streams = self._streams.get(camera_id, 0)
                scap = self.limits.max_streams_per_camera
                if scap is not None and streams >= scap:
                    raise self._refuse("camera_streams", f"this camera already has {streams} open streams (limit {scap}); reuse one")
                self._streams[camera_id] = streams + 1
            self._per_camera[camera_id] = held + 1

    def release_camera(self, camera_id: str, *, stream: bool = False) -> None:
        with self._lock:
            _decrement(self._per_camera, camera_id)
            if stream:
                _decrement(self._streams, camera_id)

    # -- frame memory --------------------------------------------------------------------
    def acquire_bytes(self, nbytes: int) -> None:
        """Reserve memory for one decoded frame before decoding it."""
        with self._lock:
            cap = self.limits.max_frame_bytes
            if cap is not None and self._frame_bytes + nbytes > cap:
                raise self._refuse(
                    "frame_bytes",
                    f"the teacher holds {self._frame_bytes >> 20} MiB of frames (limit {cap >> 20} MiB); retry later",
                )
            self._frame_bytes += nbytes

    def release_bytes(self, nbytes: int) -> None:
        with self._lock:
            self._frame_bytes = max(0, self._frame_bytes - nbytes)

    # -- reading ---------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    @property
    def frame_bytes(self) -> int:
        with self._lock:
            return self._frame_bytes

    def camera_calls(self, camera_id: str) -> int:
        with self._lock:
            return self._per_camera.get(camera_id, 0)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
