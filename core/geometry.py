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


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate an RGB uint8 (H, W, 3) frame; grayscale (H, W) is expanded."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"a frame must be RGB with shape (H, W, 3), got {frame.shape}; "
            "drop alpha with frame[..., :3] or convert with cv2.cvtColor"
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"a frame must not be empty, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8 (0..255), got {frame.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    return frame


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
