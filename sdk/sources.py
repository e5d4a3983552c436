"""Readers, one per kind of source: video files, cameras, network streams, iterables, image folders.

A reader returns raw frames (BGR for OpenCV's sources) one ``read()`` at a
time and None at the end; :mod:`sdk.streams` turns them into
:class:`~sdk.frames.Frame` objects and paces them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Union

import cv2
import numpy as np

from core.codec_messages import RateLimitedWarning, quiet_decode
from sdk.frames import StreamError

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Damaged images in a folder: one warning per this many seconds, with the count of the others.
WARN_EVERY_S = 10.0

Source = Union[str, os.PathLike, int, Iterable[np.ndarray]]


class Reader:
    description = "source"
    source_is_bgr = False
    is_device = False  # cameras / network: the device paces itself, wall-clock timestamps
    fps: Optional[float] = None
    frame_count: Optional[int] = None
    #: Source frames that could not be decoded and were left out (their indices become gaps).
    skipped = 0

    def read(self) -> Optional[np.ndarray]:
        raise NotImplementedError

    def release(self) -> None:
        pass


class CaptureReader(Reader):
    """OpenCV's VideoCapture: files, camera indices, network URLs."""

    source_is_bgr = True

    def __init__(self, target: Union[str, int], kind: str, open_timeout_s: float,
                 stall_s: Optional[float] = None) -> None:
        self.kind = kind
        self.is_device = kind in ("camera", "url")
        if kind == "url":
            self.description = redact_url(str(target))
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


_END = object()


class IterableReader(Reader):
    """The caller's frames.  A ``None`` among them is an error, not the end.

    None is how readers say "no more frames", so an iterable that yields one
    used to end the stream there without a word.  It is a bug in the caller's
    generator (a failed grab passed on), and skipping it would hide that, so it
    raises StreamError naming the frame, like any other unusable frame does.
    """

    def __init__(self, frames: Iterable[np.ndarray], description: str) -> None:
        self._it = iter(frames)
        self._count = 0
        self.description = description
        if hasattr(frames, "__len__"):
            self.frame_count = len(frames)  # type: ignore[arg-type]

    def read(self) -> Optional[np.ndarray]:
        item = next(self._it, _END)
        if item is _END:
            return None
        if item is None:
            raise StreamError(
                f"{self.description} frame {self._count}: got None instead of an image; None does not end a "
                "stream: leave frames you do not have out of the iterable, and stop iterating to end it"
            )
        self._count += 1
        return item

    def release(self) -> None:
        close = getattr(self._it, "close", None)
        if callable(close):
            close()


class FolderReader(Reader):
    """Images of one folder, sorted by name.  A damaged image is skipped, not fatal.

    A folder is a recording; one torn file in it should not end a long run.
    What libjpeg/libpng would print for it goes into a rate-limited warning
    instead (see :mod:`core.codec_messages`), and a folder where no image
    decodes at all is an error.
    """

    source_is_bgr = True

    def __init__(self, folder: Path) -> None:
        self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise StreamError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        self.description = str(folder)
        self.frame_count = len(self._files)
        self._next = 0
        self._decoded = 0
        self.skipped = 0
        self._warnings = RateLimitedWarning(log, WARN_EVERY_S)

    def read(self) -> Optional[np.ndarray]:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            image, messages = quiet_decode(cv2.imread, str(path), cv2.IMREAD_UNCHANGED)
            said = "; ".join(messages)
            if image is None:
                self.skipped += 1
                self._warnings.warn(f"{path}: not a readable image ({said or 'corrupt or unsupported format'}); "
                                    "skipped it")
                continue
            if messages:
                self._warnings.warn(f"{path}: damaged image, decoded with errors ({said}); used as decoded")
            self._decoded += 1
            if image.dtype == np.uint16:  # 16-bit PNG/TIFF: keep the top byte
                image = (image >> 8).astype(np.uint8)
            return image
        if not self._decoded and self.skipped:
            raise StreamError(
                f"{self.description}: none of its {self.skipped} images could be decoded; "
                "check the files (e.g. with `file` or an image viewer)"
            )
        return None

    def release(self) -> None:
        self._warnings.flush()


def redact_url(url: str) -> str:
    """Hide a password in rtsp://user:pass@host so it never reaches logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.partition("@")
    if at and ":" in creds:
        return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
    return url


def make_reader(source: Source, open_timeout_s: float, stall_s: Optional[float] = None) -> Reader:
    """The reader for ``source``; errors (missing file, dead camera) surface here."""
    if isinstance(source, bool):
        raise TypeError("source must be a path, a camera index, a URL or an iterable of frames, got a bool")
    if isinstance(source, (int, np.integer)):
        return CaptureReader(int(source), "camera", open_timeout_s)
    if isinstance(source, str) and source.strip().isdigit():
        return CaptureReader(int(source.strip()), "camera", open_timeout_s)
    if isinstance(source, str) and source.lower().startswith(URL_SCHEMES):
        return CaptureReader(source, "url", open_timeout_s, stall_s)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"video source {path} does not exist; check the path (demo clips: `python -m sdk.clips list`)"
            )
        if path.is_dir():
            return FolderReader(path)
        return CaptureReader(str(path), "file", open_timeout_s)
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise TypeError(
                f"a single array source must be (N, H, W, C) frames, got shape {source.shape}; "
                "wrap one frame in a list"
            )
        return IterableReader(source, f"array of {len(source)} frames")
    if isinstance(source, Iterable):
        return IterableReader(source, type(source).__name__)
    raise TypeError(
        f"unsupported source {type(source).__name__}: pass a video path, a folder of images, a camera "
        "index, an rtsp/http URL or an iterable of RGB uint8 frames"
    )
