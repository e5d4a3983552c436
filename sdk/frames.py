"""What a frame source delivers: :class:`Frame` (RGB uint8), its checks and its resize.

Every source in :mod:`sdk.sources` is brought to this one format here, so the
rest of the system never sees BGR, grayscale, RGBA or a float image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Tuple, Union

import cv2
import numpy as np

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
