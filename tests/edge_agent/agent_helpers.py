"""Shared by the agent tests: a real teacher server, real clip frames."""
from __future__ import annotations

import functools
import socket

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
