"""The one interface every teacher model sits behind.

The server, the labeler and the benchmark only ever see `TeacherBackend`:
frames in (RGB uint8, any sizes), instances out at each frame's resolution.
"""
from __future__ import annotations

import hashlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from teacher_server.semantic import Detections


class BackendUnavailable(RuntimeError):
    """The backend cannot start here (missing package or weights); the message says how to fix it."""


@dataclass
class BackendOutput:
    """Detections for a batch of frames, with where the time went."""

    detections: list[Detections]
    inference_s: float = 0.0
    postprocess_s: float = 0.0
    extra: dict = field(default_factory=dict)


class TeacherBackend(ABC):
    """An instance-segmentation model that labels batches of frames.

    Subclasses implement `_predict`; `predict` serialises calls so one model
    object can be shared by a server and an in-process labeler.
    """

    #: Registry name, e.g. "yolov5s-seg".
    name: str = ""
    #: Identifies the exact weights (package version and file digest).
    version: str = ""
    #: Where the model runs, as torch spells it ("cpu", "cuda:0").
    device: str = "cpu"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def predict(self, frames: Sequence[np.ndarray], score_threshold: float) -> BackendOutput:
        """Instances with score >= score_threshold in each frame (RGB uint8, H x W x 3)."""
        for i, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or min(frame.shape[:2]) < 1:
                raise ValueError(f"frame {i} must be RGB uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if not frames:
            return BackendOutput(detections=[])
        with self._lock:
            return self._predict(list(frames), float(score_threshold))

    @abstractmethod
    def _predict(self, frames: list[np.ndarray], score_threshold: float) -> BackendOutput:
        ...

    def warmup(self, height: int = 480, width: int = 854) -> float:
        """Run one frame so the first real request does not pay for lazy initialisation."""
        start = time.perf_counter()
        self.predict([np.full((height, width, 3), 114, np.uint8)], 0.5)
        return time.perf_counter() - start

    def close(self) -> None:
        """Release what the model holds (GPU memory); the default has nothing to do."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, device={self.device!r})"


def file_digest(path: Path, length: int = 12) -> str:
    """Short sha256 of a weights file, so model_version names the exact weights served."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
