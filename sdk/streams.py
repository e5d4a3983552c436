"""Frame streams: any source, delivered as :class:`Frame` objects in replay or live mode.

Every source yields RGB uint8 (H, W, 3) frames, the one frame format the rest
of the system speaks (:mod:`sdk.frames`; the readers are in :mod:`sdk.sources`,
the reconnecting one in :mod:`sdk.reconnecting`).  Two ways to consume:

* replay: every frame in order, at the consumer's pace (evaluations, tests);
* live: a reader thread keeps only the newest frame(s), so a consumer slower
  than the camera drops frames instead of falling further and further behind.
  Frame indices keep counting the source's frames, so drops show up as gaps.

Typical use::

    with open_stream("street.mp4", live=True) as stream:
        for frame in stream:
            result = agent.process(frame.index, frame.image_rgb)
    print(stream.stats)
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from sdk.frames import Frame, Resize, StreamError, StreamStats, check_resize, ensure_rgb, resize_frame
from sdk.reconnecting import ReconnectingReader
from sdk.sources import Reader, Source, make_reader

log = logging.getLogger(__name__)

#: Frame rate assumed for arrays and image folders when none is given.
DEFAULT_FPS = 30.0


class FrameStream:
    """An open source; iterate it for :class:`Frame` objects, close it when done."""

    def __init__(
        self,
        reader: Reader,
        *,
        live: bool,
        max_frames: Optional[int],
        resize: Resize,
        fps: Optional[float],
        buffer_size: int,
    ) -> None:
        self._reader = reader
        self.live = live
        self.max_frames = max_frames
        self.resize = resize
        self.fps = fps or reader.fps or (None if reader.is_device else DEFAULT_FPS)
        self.buffer_size = buffer_size
        self.stats = StreamStats()
        self._closed = False
        self._exhausted = False
        self._t0: Optional[float] = None
        # live mode
        self._buffer: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._ended = False
        self._error: Optional[BaseException] = None
        if isinstance(reader, ReconnectingReader):
            reader.stop = self._stop  # close() interrupts a back-off wait

    @property
    def state(self) -> str:
        """``ok``, ``reconnecting`` (a live source that dropped) or ``ended``."""
        if self._ended or self._exhausted or self._closed:
            return "ended"
        return getattr(self._reader, "state", "ok")

    @property
    def reconnects(self) -> int:
        return getattr(self._reader, "reconnects", 0)

    # -- public ----------------------------------------------------------------
    @property
    def description(self) -> str:
        return self._reader.description

    @property
    def frame_count(self) -> Optional[int]:
        """Frames in the source when known (files, folders, sized iterables)."""
        return self._reader.frame_count

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise StreamError(f"{self.description}: stream is closed")
        return self._iter_live() if self.live else self._iter_replay()

    def close(self) -> None:
        """Stop the reader thread and release the device or file; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("%s: reader thread did not stop within 10 s", self.description)
        self._reader.release()
        if self.live:
            log.info("%s: live stream closed, %s", self.description, self.stats.as_dict())

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "live" if self.live else "replay"
        return f"FrameStream({self.description!r}, {mode}, fps={self.fps}, {self.stats.as_dict()})"

    # -- internals -------------------------------------------------------------
    def _next_frame(self) -> Optional[Frame]:
        """Read, check and convert the next source frame (any thread)."""
        raw = self._reader.read()
        now = time.monotonic()
        self.stats.skipped = self._reader.skipped
        if raw is None:
            return None
        index = self.stats.read + self.stats.skipped  # a skipped (undecodable) source frame is a gap
        self.stats.read += 1
        image = ensure_rgb(raw, source_is_bgr=self._reader.source_is_bgr, where=f"{self.description} frame {index}")
        image = resize_frame(image, self.resize)
        if self._t0 is None:
            self._t0 = now
        if self._reader.is_device or not self.fps:
            ts = now - self._t0
        else:
            ts = index / self.fps
        return Frame(index, image, ts, now)

    def _budget_left(self) -> bool:
        return self.max_frames is None or self.stats.delivered < self.max_frames

    def _iter_replay(self) -> Iterator[Frame]:
        while not self._closed and not self._exhausted and self._budget_left():
            frame = self._next_frame()
            if frame is None:
                self._exhausted = True
                return
            self.stats.delivered += 1
            yield frame

    def _iter_live(self) -> Iterator[Frame]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, name=f"stream:{self.description}", daemon=True)
            self._thread.start()
        while self._budget_left():
            with self._cond:
                while not self._buffer and not self._ended and not self._closed:
                    self._cond.wait(timeout=0.5)
                if self._buffer:
                    frame = self._buffer.popleft()
                elif self._error is not None:
                    error, self._error = self._error, None
                    raise error
                else:
                    return
            self.stats.delivered += 1
            yield frame
        self._stop.set()

    def _pump(self) -> None:
        """Reader thread: pace files to their frame rate, keep only the newest frames."""
        start = time.monotonic()
        try:
            while not self._stop.is_set():
                if not self._reader.is_device and self.fps:
                    due = start + (self.stats.read + self.stats.skipped) / self.fps
                    delay = due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                frame = self._next_frame()
                if frame is None:
                    break
                with self._cond:
                    if len(self._buffer) >= self.buffer_size:
                        self._buffer.popleft()
                        self.stats.dropped += 1
                    self._buffer.append(frame)
                    self._cond.notify()
        except BaseException as exc:  # handed to the consumer, raised there
            self._error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()


def open_stream(
    source: Source,
    *,
    live: Optional[bool] = None,
    max_frames: Optional[int] = None,
    resize: Resize = None,
    fps: Optional[float] = None,
    buffer_size: int = 1,
    open_timeout_s: float = 10.0,
    stall_s: float = 5.0,
    reconnect: Optional[bool] = None,
    max_reconnects: Optional[int] = None,
    reconnect_delays_s: tuple[float, float] = (0.5, 30.0),
) -> FrameStream:
    """Open a frame source; errors surface here, not at the first frame.

    source: a video file, a folder of images (sorted by name), a camera index
        (``0`` or ``"0"``), an rtsp/http(s)/rtmp/udp URL, or an iterable of
        frames (RGB uint8 (H, W, 3); grayscale and RGBA are converted).
    live: drop frames a slow consumer cannot keep up with.  Default: on for
        cameras and URLs, off otherwise; a live file or array plays at ``fps``.
    max_frames: stop after this many frames were yielded.
    resize: (width, height), or a scale factor, applied as frames are read.
    fps: overrides the source's frame rate (timestamps, live pacing); arrays
        and folders default to 30.
    buffer_size: frames kept for the consumer in live mode (1 = newest only).
    open_timeout_s: connect timeout for network streams.
    stall_s: a network stream that delivers no frame for this long is reopened.
    reconnect: reopen a live source (URL, camera) that fails, ends or stalls, with
        exponential back-off (``reconnect_delays_s``: first, max); default on
        for cameras and URLs.  Files and arrays end at their end.
    max_reconnects: attempts in a row without a frame before StreamError; None = forever.
    """
    if stall_s <= 0:
        raise ValueError(f"stall_s must be > 0, got {stall_s}")
    if max_reconnects is not None and max_reconnects < 0:
        raise ValueError(f"max_reconnects must be >= 0, got {max_reconnects}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    resize = check_resize(resize)
    reader = make_reader(source, open_timeout_s, stall_s)
    if live is None:
        live = reader.is_device
    if reconnect is None:
        reconnect = reader.is_device
    if reconnect and reader.is_device:
        reader = ReconnectingReader(lambda: make_reader(source, open_timeout_s, stall_s), reader,
                                     max_reconnects=max_reconnects, delays=reconnect_delays_s)
    log.debug("opened %s (%s)", reader.description, "live" if live else "replay")
    return FrameStream(reader, live=live, max_frames=max_frames, resize=resize, fps=fps, buffer_size=buffer_size)


def read_frames(source: Source, *, max_frames: Optional[int] = None, resize: Resize = None) -> list[np.ndarray]:
    """Every frame of a (finite) source as RGB arrays, in order; for tests and short clips."""
    with open_stream(source, live=False, max_frames=max_frames, resize=resize) as stream:
        return [f.image_rgb for f in stream]


__all__: Sequence[str] = (
    "Frame", "FrameStream", "StreamError", "StreamStats", "ensure_rgb", "open_stream", "read_frames",
)
