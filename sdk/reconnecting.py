"""A live source (camera, network stream) that comes back when it fails, ends or stalls."""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

import numpy as np

from sdk.frames import StreamError
from sdk.sources import Reader

log = logging.getLogger(__name__)


class ReconnectingReader(Reader):
    """A failed read, an end or a stall closes the inner reader and reopens it.

    Reopening backs off exponentially (``delays``: first, max), forever unless
    ``max_reconnects`` bounds the attempts in a row without a frame.  ``state``
    is ``ok`` or ``reconnecting``; ``reconnects`` counts the times it came back.
    """

    def __init__(self, open_reader: Callable[[], Reader], first: Reader, *, max_reconnects: Optional[int],
                 delays: tuple[float, float], stop: Optional[threading.Event] = None) -> None:
        self._open = open_reader
        self._inner: Optional[Reader] = first
        self.description = first.description
        self.source_is_bgr = first.source_is_bgr
        self.is_device = first.is_device
        self.fps = first.fps
        self.max_reconnects = max_reconnects
        self.delays = delays
        self.stop = stop or threading.Event()
        self.state = "ok"
        self.reconnects = 0
        self.last_error: Optional[str] = None

    def read(self) -> Optional[np.ndarray]:
        attempts = 0
        while not self.stop.is_set():
            if self._inner is not None:
                try:
                    image = self._inner.read()
                    why = "the stream ended" if image is None else None
                except Exception as exc:  # noqa: BLE001 - a broken read is one more reason to reconnect
                    image, why = None, f"read failed ({exc})"
                if image is not None:
                    if self.state != "ok":
                        self.state = "ok"
                        self.reconnects += 1
                        log.warning("%s: back after %d attempt(s) (reconnect %d)",
                                    self.description, attempts, self.reconnects)
                    return image
                self._inner.release()
                self._inner = None
                self.state, self.last_error = "reconnecting", why
                log.warning("%s: %s; reconnecting", self.description, why)
            if self.max_reconnects is not None and attempts >= self.max_reconnects:
                raise StreamError(
                    f"{self.description}: gave up after {attempts} reconnect attempt(s) ({self.last_error}); "
                    "check the camera and the network, or raise --max-reconnects"
                )
            delay = min(self.delays[1], self.delays[0] * 2 ** attempts)
            attempts += 1
            if self.stop.wait(delay):
                break
            try:
                self._inner = self._open()
                log.info("%s: reopened (attempt %d)", self.description, attempts)
            except Exception as exc:  # noqa: BLE001
                self.last_error = str(exc)
                log.warning("%s: reconnect attempt %d failed (%s); next in %.1f s", self.description, attempts,
                            exc, min(self.delays[1], self.delays[0] * 2 ** attempts))
        return None

    def release(self) -> None:
        self.stop.set()
        if self._inner is not None:
            self._inner.release()
            self._inner = None
