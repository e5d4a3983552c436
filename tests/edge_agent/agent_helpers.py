"""Shared by the agent tests: a real teacher server, real clip frames."""
from __future__ import annotations

import functools
import socket
import time

import numpy as np

from sdk.clips import first_available
from sdk.streams import read_frames


@functools.cache
def clip_frames(count: int, scale: float = 0.5) -> tuple[np.ndarray, ...]:
    """The first ``count`` frames of the real demo clip (vtest, else bikes), scaled."""
    return tuple(read_frames(str(first_available(("vtest", "bikes"))), max_frames=count, resize=scale))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowBackend:
    """A real teacher backend that takes ``delay_s`` longer per batch (a loaded, remote teacher)."""

    def __init__(self, backend, delay_s: float):
        self._backend, self.delay_s = backend, delay_s

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def predict(self, frames, score_threshold):
        time.sleep(self.delay_s)
        return self._backend.predict(frames, score_threshold)
