"""Shared by the teacher tests: one real yolov5s-seg backend per test process, DAVIS files.

Not a conftest (test rooms share the `conftest` module name); test modules
import what they need from here. The backend is cached so every module reuses
the same loaded model.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
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
