"""From camera frames to what the student accepts, and back.

JITNet's total stride is 32, so the student sees frames scaled by the
config's ``input_scale`` and padded to a multiple of 32; its outputs are
cropped and resized back to the frame's resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

STRIDE = 32


#: The frame format of the whole system, and what is converted to it.
FRAME_FORMAT = "RGB uint8 of shape (H, W, 3)"
CONVERTED = "grayscale (H, W) or (H, W, 1) and RGBA (H, W, 4) are converted"


def check_frame(frame: np.ndarray, *, convert: bool = True, bgr: bool = False) -> np.ndarray:
    """The one frame check: an RGB uint8 (H, W, 3) C-contiguous array, or an error saying how to get one.

    Sources, the agent, the teacher client and the trainer all call it, so a bad
    frame gets the same advice wherever it is caught.  ``convert`` (frames as users
    hand them in) expands grayscale and drops RGBA's alpha; without it (the trainer,
    which only takes what the agent prepared) those are refused.  ``bgr``: the frame
    is in OpenCV's channel order and is flipped (one copy, with the rest).
    """
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a frame must be a numpy array, {FRAME_FORMAT}; got {type(frame).__name__}")
    if frame.size == 0:
        raise ValueError(f"a frame must not be empty, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(
            f"a frame must be uint8 (0..255), got {frame.dtype}; for floats in [0, 1] use "
            "(img * 255).round().astype(np.uint8), for other ranges np.clip(img, 0, 255).astype(np.uint8)"
        )
    if convert and frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if convert and frame.ndim == 2:
        return np.ascontiguousarray(np.repeat(frame[:, :, None], 3, axis=2))
    if convert and frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if frame.ndim != 3 or frame.shape[2] != 3:
        hint = CONVERTED if convert else "convert grayscale and RGBA with core.geometry.check_frame or cv2.cvtColor"
        raise ValueError(f"shape {frame.shape} is not an image here: a frame must be {FRAME_FORMAT} ({hint})")
    if bgr:
        frame = frame[:, :, ::-1]
    return np.ascontiguousarray(frame)


@dataclass(frozen=True)
class Geometry:
    """How a frame maps onto the student's input: scale, then pad bottom/right."""

    frame_hw: tuple[int, int]
    scaled_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @classmethod
    def for_frame(cls, frame_hw: tuple[int, int], scale: float = 1.0) -> "Geometry":
        h, w = frame_hw
        sh, sw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        ph, pw = -(-sh // STRIDE) * STRIDE, -(-sw // STRIDE) * STRIDE
        return cls((h, w), (sh, sw), (ph, pw))

    def image(self, frame: np.ndarray, *, validated: bool = False) -> np.ndarray:
        """The student's input: scaled, edge-padded RGB uint8 (``validated``: check_frame already ran)."""
        if not validated:
            frame = check_frame(frame)
        if frame.shape[:2] != self.frame_hw:
            raise ValueError(f"frame is {frame.shape[:2]}, this geometry is for {self.frame_hw}")
        if self.scaled_hw != self.frame_hw:
            frame = cv2.resize(frame, self.scaled_hw[::-1], interpolation=cv2.INTER_AREA)
        return self._pad(frame, cv2.BORDER_REPLICATE)

    def labels(self, label_map: np.ndarray) -> np.ndarray:
        """Teacher labels at the frame's resolution -> the student's grid (padding is background)."""
        if label_map.shape != self.frame_hw:
            raise ValueError(f"label map is {label_map.shape}, frame is {self.frame_hw}")
        if self.scaled_hw != self.frame_hw:
            label_map = cv2.resize(label_map, self.scaled_hw[::-1], interpolation=cv2.INTER_NEAREST)
        return self._pad(label_map, cv2.BORDER_CONSTANT)

    def weights(self, weights: np.ndarray) -> np.ndarray:
        """Pixel weights -> the student's grid; padding gets weight 0 so it never trains."""
        if self.scaled_hw != self.frame_hw:
            weights = cv2.resize(weights, self.scaled_hw[::-1], interpolation=cv2.INTER_NEAREST)
        return self._pad(weights.astype(np.float32), cv2.BORDER_CONSTANT)

    def to_frame(self, prediction: np.ndarray) -> np.ndarray:
        """The student's label map -> the frame's resolution."""
        sh, sw = self.scaled_hw
        out = prediction[:sh, :sw]
        if self.scaled_hw != self.frame_hw:
            out = cv2.resize(out, self.frame_hw[::-1], interpolation=cv2.INTER_NEAREST)
        return np.ascontiguousarray(out)

    def _pad(self, array: np.ndarray, border: int) -> np.ndarray:
        ph, pw = self.padded_hw
        sh, sw = array.shape[:2]
        if (sh, sw) == (ph, pw):
            return np.ascontiguousarray(array)
        return cv2.copyMakeBorder(array, 0, ph - sh, 0, pw - sw, border, value=0)
