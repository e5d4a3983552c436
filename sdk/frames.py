"""What a frame source delivers: :class:`Frame` (RGB uint8), its checks and its resize.

Every source in :mod:`sdk.sources` is brought to this one format here (by
core.geometry.check_frame, the system's one frame check), so the rest of the
system never sees BGR, grayscale, RGBA or a float image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Tuple, Union

import cv2
import numpy as np

from core.geometry import check_frame

Resize = Union[Tuple[int, int], float, None]


class StreamError(RuntimeError):
    """A source could not be opened or delivered an unusable frame."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame of a stream."""

    #: Position in the source (0-based); gaps mean dropped (live mode) or unreadable (skipped) frames.
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
    """Counters for one stream: ``dropped`` is what live mode threw away, ``skipped`` what could not be decoded."""

    read: int = 0
    delivered: int = 0
    dropped: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"read": self.read, "delivered": self.delivered, "dropped": self.dropped, "skipped": self.skipped}


def ensure_rgb(image: Any, *, source_is_bgr: bool = False, where: str = "frame") -> np.ndarray:
    """A source's frame through :func:`core.geometry.check_frame` (the one frame check), as RGB uint8.

    OpenCV's BGR is flipped here, once; a frame the check refuses raises
    StreamError naming the frame, with the check's own advice.
    """
    try:
        return check_frame(image, bgr=source_is_bgr)
    except (TypeError, ValueError) as exc:
        raise StreamError(f"{where}: {exc}") from None


def resize_frame(image: np.ndarray, resize: Resize) -> np.ndarray:
    """``resize``: (width, height), a scale factor, or None; area filter when shrinking."""
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


def check_resize(resize: Any) -> Resize:
    """The caller's ``resize`` option, validated once at open."""
    if resize is None:
        return None
    if isinstance(resize, (tuple, list)):
        if len(resize) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in resize):
            raise ValueError(f"resize must be (width, height) with positive integers, got {resize!r}")
        return int(resize[0]), int(resize[1])
    if isinstance(resize, (int, float)) and not isinstance(resize, bool) and resize > 0:
        return float(resize)
    raise ValueError(f"resize must be (width, height) or a positive scale factor, got {resize!r}")
