"""Shared by the teacher tests: one real yolov5s-seg backend per test process, DAVIS files.

Not a conftest (test rooms share the `conftest` module name); test modules
import what they need from here. The backend is cached so every module reuses
the same loaded model.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"cam-a": "token-for-camera-a", "cam-b": "token-for-camera-b"}
DAVIS_ROOT = Path(os.environ.get("JITNET_DAVIS_ROOT", REPO_ROOT.parent / "shared" / "data" / "davis2016"))


@functools.cache
def yolo_backend():
    """The real yolov5s-seg teacher (loaded once, warmed up once)."""
    from teacher_server.backends import load_backend

    backend = load_backend("yolov5s-seg")
    backend.warmup()
    return backend


def davis_jpeg(sequence: str, index: int) -> bytes:
    """The frame's JPEG file exactly as stored (what a camera would send)."""
    path = DAVIS_ROOT / "JPEGImages" / sequence / f"{index:05d}.jpg"
    if not path.is_file():
        pytest.skip(f"DAVIS frame {path} not found: it comes from the workspace's ../shared/data (or set JITNET_DAVIS_ROOT)")
    return path.read_bytes()


def davis_rgb(sequence: str, index: int) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(davis_jpeg(sequence, index), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def davis_mask(sequence: str, index: int) -> np.ndarray:
    path = DAVIS_ROOT / "Annotations" / sequence / f"{index:05d}.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        pytest.skip(f"DAVIS mask {path} not found: it comes from the workspace's ../shared/data (or set JITNET_DAVIS_ROOT)")
    return mask > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def small_jpeg(step: int = 4) -> bytes:
    """DAVIS dog frame 10 at 1/step of its size, as a camera's JPEG: cheap for the teacher, still a real frame."""
    frame = np.ascontiguousarray(davis_rgb("dog", 10)[::step, ::step])
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def label_request(camera: str, index: int, jpeg: bytes, groups=("dog",)):
    from protos import teacher_pb2

    return teacher_pb2.LabelRequest(camera_id=camera, frame_index=index, encoded=jpeg, groups=list(groups))


def wait_until(condition, timeout: float = 30.0, every: float = 0.01) -> None:
    """Poll `condition` until it holds; fail after `timeout` s (a deadline, never a sleep as synchronisation)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


class SlowBackend:
    """A real teacher backend that takes ``delay_s`` longer per batch (a loaded, remote teacher)."""

    def __init__(self, backend, delay_s: float):
        self._backend, self.delay_s = backend, delay_s

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def predict(self, frames, score_threshold):
        time.sleep(self.delay_s)
        return self._backend.predict(frames, score_threshold)


class StderrWatch:
    """Reads a `jitnet teacher` process's stderr on a thread, keeping every line, until `pattern` first matches."""

    def __init__(self, proc: subprocess.Popen, pattern: str) -> None:
        self.lines: list[str] = []
        self.match: "re.Match[str] | None" = None
        self._found = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(proc, re.compile(pattern)), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen, pattern: "re.Pattern[str]") -> None:
        for line in proc.stderr:
            self.lines.append(line)
            match = pattern.search(line) if self.match is None else None
            if match:
                self.match = match
                self._found.set()

    def wait(self, timeout: float) -> "re.Match[str]":
        """The first match; fails with everything read so far when none came within `timeout` s."""
        assert self._found.wait(timeout), "".join(self.lines)
        return self.match

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
