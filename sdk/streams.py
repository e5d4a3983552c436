"""Frame sources: video files, cameras, network streams, arrays, image folders.

Every source yields :class:`Frame` objects holding RGB uint8 (H, W, 3) images,
the one frame format the rest of the system speaks.  Two ways to consume:

* replay: every frame in order, at the consumer's pace (evaluations, tests);
* live: a reader thread keeps only the newest frame(s), so a consumer slower
  than the camera drops frames instead of falling further and further behind.
  Frame indices keep counting the source's frames, so drops show up as gaps.

Typical use::

    with open_stream("street.mp4", live=True) as stream:
        for frame in stream:
            labels = agent.step(frame.index, frame.image_rgb)
    print(stream.stats)
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Frame rate assumed for arrays and image folders when none is given.
DEFAULT_FPS = 30.0

Source = Union[str, os.PathLike, int, Iterable[np.ndarray]]
Resize = Union[Tuple[int, int], float, None]


class StreamError(RuntimeError):
    """A source could not be opened or delivered an unusable frame."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame of a stream."""

    #: Position in the source (0-based); gaps mean dropped frames in live mode.
    index: int
    #: RGB uint8 (H, W, 3), C-contiguous.
    image_rgb: np.ndarray = field(repr=False)
    #: Media time for files, arrays and folders (index / fps); seconds since
    #: the stream started for cameras and network streams.
    timestamp_s: float
    #: time.monotonic() when the frame left the source, to measure latency.
    captured_at: float = field(default_factory=time.monotonic, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), OpenCV's order."""
        return self.image_rgb.shape[1], self.image_rgb.shape[0]


@dataclass
class StreamStats:
    """Counters for one stream; ``dropped`` is what live mode threw away."""

    read: int = 0
    delivered: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"read": self.read, "delivered": self.delivered, "dropped": self.dropped}


def ensure_rgb(image: Any, *, source_is_bgr: bool = False, where: str = "frame") -> np.ndarray:
    """Check a frame and bring it to RGB uint8 (H, W, 3), C-contiguous.

    Grayscale (H, W) / (H, W, 1) is expanded to three channels and RGBA loses
    its alpha; anything else raises, because guessing a float scale or a
    channel order would silently feed the student garbage.
    """
    if not isinstance(image, np.ndarray):
        raise StreamError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise StreamError(f"{where}: empty image with shape {image.shape}")
    if image.dtype != np.uint8:
        raise StreamError(
            f"{where}: dtype {image.dtype} is not supported; frames must be uint8 0..255 "
            "(for floats in [0, 1] use (img * 255).round().astype(np.uint8))"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise StreamError(
            f"{where}: shape {image.shape} is not an image; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if source_is_bgr:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def _resize(image: np.ndarray, resize: Resize) -> np.ndarray:
    if resize is None:
        return image
    h, w = image.shape[:2]
    if isinstance(resize, tuple):
        size = resize
    else:
        size = (max(1, round(w * resize)), max(1, round(h * resize)))
    if size == (w, h):
        return image
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _check_resize(resize: Any) -> Resize:
    if resize is None:
        return None
    if isinstance(resize, (tuple, list)):
        if len(resize) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in resize):
            raise ValueError(f"resize must be (width, height) with positive integers, got {resize!r}")
        return int(resize[0]), int(resize[1])
    if isinstance(resize, (int, float)) and not isinstance(resize, bool) and resize > 0:
        return float(resize)
    raise ValueError(f"resize must be (width, height) or a positive scale factor, got {resize!r}")


# --- readers: one per kind of source; each returns raw frames or None at the end


class _Reader:
    description = "source"
    source_is_bgr = False
    is_device = False  # cameras / network: the device paces itself, wall-clock timestamps
    fps: Optional[float] = None
    frame_count: Optional[int] = None

    def read(self) -> Optional[np.ndarray]:
        raise NotImplementedError

    def release(self) -> None:
        pass


class _CaptureReader(_Reader):
    source_is_bgr = True

    def __init__(self, target: Union[str, int], kind: str, open_timeout_s: float,
                 stall_s: Optional[float] = None) -> None:
        self.kind = kind
        self.is_device = kind in ("camera", "url")
        if kind == "url":
            self.description = _redact(str(target))
            ms = int(open_timeout_s * 1000)
            read_ms = int((stall_s or open_timeout_s) * 1000)  # a read that waits longer is a stall
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
            cap = cv2.VideoCapture(str(target), cv2.CAP_FFMPEG, params)
        else:
            self.description = f"camera {target}" if kind == "camera" else str(target)
            cap = cv2.VideoCapture(target)
        self._cap = cap
        if not cap.isOpened():
            cap.release()
            raise StreamError(self._open_hint(target))
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if kind == "file" and count > 0 else None
        self._peeked: Optional[np.ndarray] = None
        self._read = 0
        if kind == "file":  # fail at open, not at the first frame, for files that open but do not decode
            ok, image = cap.read()
            if not ok or image is None:
                cap.release()
                raise StreamError(
                    f"{target}: OpenCV opened the file but could not decode a frame; the codec may be "
                    "unsupported by this OpenCV build: re-encode it, e.g. "
                    "`ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"
                )
            self._peeked = image

    def _open_hint(self, target: Union[str, int]) -> str:
        if self.kind == "camera":
            return (
                f"could not open camera {target}: check that /dev/video{target} exists, that your user may "
                "read it (the 'video' group), that no other program holds it, and in a container that the "
                "device is passed through (--device /dev/video0)"
            )
        if self.kind == "url":
            return (
                f"could not open stream {self.description}: check the URL, user and password, that the "
                "host is reachable from here and that it serves RTSP/HTTP video (try it with ffplay or VLC)"
            )
        return (
            f"could not open video file {target}: it is not a video OpenCV can read (corrupt, truncated, "
            "or a codec this build lacks); check it with ffprobe or re-encode it to H.264 mp4"
        )

    def read(self) -> Optional[np.ndarray]:
        if self._peeked is not None:
            image, self._peeked = self._peeked, None
            self._read += 1
            return image
        ok, image = self._cap.read()
        if not ok or image is None:
            if self.frame_count is not None and self._read < self.frame_count - 1:
                log.warning(
                    "%s: decoding stopped at frame %d of %d; the file may be truncated or corrupt",
                    self.description, self._read, self.frame_count,
                )
            return None
        self._read += 1
        return image

    def release(self) -> None:
        self._cap.release()


class _IterableReader(_Reader):
    def __init__(self, frames: Iterable[np.ndarray], description: str) -> None:
        self._it = iter(frames)
        self.description = description
        if hasattr(frames, "__len__"):
            self.frame_count = len(frames)  # type: ignore[arg-type]

    def read(self) -> Optional[np.ndarray]:
        return next(self._it, None)

    def release(self) -> None:
        close = getattr(self._it, "close", None)
        if callable(close):
            close()


class _FolderReader(_Reader):
    source_is_bgr = True

    def __init__(self, folder: Path) -> None:
        self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise StreamError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        self.description = str(folder)
        self.frame_count = len(self._files)
        self._next = 0

    def read(self) -> Optional[np.ndarray]:
        if self._next >= len(self._files):
            return None
        path = self._files[self._next]
        self._next += 1
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise StreamError(f"{path}: not a readable image (corrupt or unsupported format)")
        if image.dtype == np.uint16:  # 16-bit PNG/TIFF: keep the top byte
            image = (image >> 8).astype(np.uint8)
        return image


class _ReconnectingReader(_Reader):
    """A live source that comes back: a failed read, an end or a stall closes and reopens it.

    Reopening backs off exponentially (``delays``: first, max), forever unless
    ``max_reconnects`` bounds the attempts in a row without a frame.  ``state``
    is ``ok`` or ``reconnecting``; ``reconnects`` counts the times it came back.
    """

    def __init__(self, open_reader, first: _Reader, *, max_reconnects: Optional[int],
                 delays: tuple[float, float], stop: Optional[threading.Event] = None) -> None:
        self._open = open_reader
        self._inner: Optional[_Reader] = first
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


def _redact(url: str) -> str:
    """Hide a password in rtsp://user:pass@host so it never reaches logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.partition("@")
    if at and ":" in creds:
        return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
    return url


def _make_reader(source: Source, open_timeout_s: float, stall_s: Optional[float] = None) -> _Reader:
    if isinstance(source, bool):
        raise TypeError("source must be a path, a camera index, a URL or an iterable of frames, got a bool")
    if isinstance(source, (int, np.integer)):
        return _CaptureReader(int(source), "camera", open_timeout_s)
    if isinstance(source, str) and source.strip().isdigit():
        return _CaptureReader(int(source.strip()), "camera", open_timeout_s)
    if isinstance(source, str) and source.lower().startswith(URL_SCHEMES):
        return _CaptureReader(source, "url", open_timeout_s, stall_s)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"video source {path} does not exist; check the path (demo clips: `python -m sdk.clips list`)"
            )
        if path.is_dir():
            return _FolderReader(path)
        return _CaptureReader(str(path), "file", open_timeout_s)
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise TypeError(
                f"a single array source must be (N, H, W, C) frames, got shape {source.shape}; "
                "wrap one frame in a list"
            )
        return _IterableReader(source, f"array of {len(source)} frames")
    if isinstance(source, Iterable):
        return _IterableReader(source, type(source).__name__)
    raise TypeError(
        f"unsupported source {type(source).__name__}: pass a video path, a folder of images, a camera "
        "index, an rtsp/http URL or an iterable of RGB uint8 frames"
    )


class FrameStream:
    """An open source; iterate it for :class:`Frame` objects, close it when done."""

    def __init__(
        self,
        reader: _Reader,
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
        if isinstance(reader, _ReconnectingReader):
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
        if raw is None:
            return None
        index = self.stats.read
        self.stats.read += 1
        image = ensure_rgb(raw, source_is_bgr=self._reader.source_is_bgr, where=f"{self.description} frame {index}")
        image = _resize(image, self.resize)
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
                    due = start + self.stats.read / self.fps
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
    resize = _check_resize(resize)
    reader = _make_reader(source, open_timeout_s, stall_s)
    if live is None:
        live = reader.is_device
    if reconnect is None:
        reconnect = reader.is_device
    if reconnect and reader.is_device:
        reader = _ReconnectingReader(lambda: _make_reader(source, open_timeout_s, stall_s), reader,
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
