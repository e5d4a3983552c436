"""libjpeg/libpng complaints kept off stderr and reported through logging, at a bounded rate.

OpenCV's JPEG and PNG decoders let libjpeg and libpng print their warnings
("Premature end of JPEG file", "libpng error: IDAT: CRC error") straight to
file descriptor 2, one line per bad image and no rate limit: a camera that
sends a stream of damaged frames floods the log with lines nobody can act on,
and nothing in Python can silence them.  :func:`quiet_decode` runs one decode
with fd 2 pointed at a private file and hands the codec's lines back to the
caller, who reports them with :class:`RateLimitedWarning` (one log line per
interval, with how many it stood for).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

# What libjpeg(-turbo)'s warnings, libpng and OpenCV's imgcodecs print; any other line seen while fd 2
# is captured (another thread's log line, a traceback) is written back to the real stderr unchanged.
_CODEC_LINE = re.compile(
    r"^(libpng (warning|error)|Corrupt JPEG|Premature end of JPEG|Invalid (JPEG|SOS)|Inconsistent progression"
    r"|Unsupported (JPEG|marker)|Bogus|Warning: (unknown JFIF|thumbnail)|Application transferred|Not a JPEG"
    r"|JPEG|Huffman|Quantization|\[ ?(WARN|ERROR|INFO):)"
)

# fd 2 is one per process: decodes that capture it take turns.
_LOCK = threading.Lock()
_sink: Optional[int] = None


def _sink_fd() -> int:
    global _sink
    if _sink is None:
        with tempfile.TemporaryFile() as f:  # already unlinked: nothing is left on disk
            _sink = os.dup(f.fileno())  # our own descriptor, kept for the process's life
    return _sink


def quiet_decode(decode: Callable[..., T], *args: object) -> tuple[T, list[str]]:
    """``decode(*args)`` with fd 2 captured: its result and the codec lines it printed.

    Lines that are not the codec's (another thread writing to stderr in the
    same few milliseconds) go back to stderr as they were, so nothing is lost.
    Where fd 2 cannot be captured the decode simply runs as is.
    """
    with _LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            return decode(*args), []
        try:
            try:
                sys.stderr.flush()  # Python's own pending output belongs to the real stderr
            except (AttributeError, OSError, ValueError):
                pass
            sink = _sink_fd()
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
            os.dup2(sink, 2)
            try:
                result = decode(*args)
            finally:
                os.dup2(saved, 2)
            size = os.lseek(sink, 0, os.SEEK_CUR)
            os.lseek(sink, 0, os.SEEK_SET)
            text = os.read(sink, size).decode("utf-8", "replace") if size else ""
        finally:
            os.close(saved)
    codec, other = [], []
    for line in text.splitlines(keepends=True):
        (codec if _CODEC_LINE.match(line) else other).append(line)
    if other:
        try:
            os.write(2, "".join(other).encode())
        except OSError:
            pass
    return result, [line.strip() for line in codec]


class RateLimitedWarning:
    """One warning per ``interval_s`` at most; the ones in between are counted and the count logged.

    The first occurrence is logged at once (the user learns there is a problem),
    later ones as "N more like it" when the interval has passed, and
    :meth:`flush` logs what is left (at the end of a stream).
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval_s, self._clock = logger, interval_s, clock
        self._lock = threading.Lock()
        self._last: Optional[float] = None
        self._held = 0
        #: Every occurrence, logged or not.
        self.total = 0

    def warn(self, message: str) -> bool:
        """Log ``message`` unless one was logged less than ``interval_s`` ago; True when it was logged."""
        with self._lock:
            now = self._clock()
            self.total += 1
            if self._last is not None and now - self._last < self.interval_s:
                self._held += 1
                return False
            if self._last is None:
                suffix = f" (more like it are counted and logged at most every {self.interval_s:g} s)"
            elif self._held:
                suffix = f" ({self._held} more like it in the last {now - self._last:.0f} s)"
            else:
                suffix = ""
            self._last, self._held = now, 0
        self.logger.warning("%s%s", message, suffix)
        return True

    def flush(self) -> None:
        """Log the count of occurrences held back since the last logged one."""
        with self._lock:
            held, self._held = self._held, 0
        if held:
            self.logger.warning("%d more like the last warning were not logged (%d in all)", held, self.total)
