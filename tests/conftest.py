"""Fixtures shared by every test room: where the real data lives."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DAVIS_ROOT = Path(os.environ.get("JITNET_DAVIS_ROOT", REPO_ROOT.parent / "shared" / "data" / "davis2016"))


def load_davis_frame(sequence: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A real DAVIS 2016 frame (RGB uint8, 480x854) and its human mask (bool)."""
    image_path = DAVIS_ROOT / "JPEGImages" / sequence / f"{index:05d}.jpg"
    mask_path = DAVIS_ROOT / "Annotations" / sequence / f"{index:05d}.png"
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR) if image_path.is_file() else None
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) if mask_path.is_file() else None
    if image is None or mask is None:
        pytest.skip(f"DAVIS frame {sequence}/{index:05d} not found under {DAVIS_ROOT}: this test needs the "
                    "workspace's ../shared/data/davis2016 (or JITNET_DAVIS_ROOT pointing at a DAVIS 2016 copy)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), mask > 0


@pytest.fixture(scope="session")
def davis_root() -> Path:
    if not (DAVIS_ROOT / "JPEGImages").is_dir():
        pytest.skip(f"DAVIS 2016 data not found at {DAVIS_ROOT}: it comes from the workspace's ../shared/data "
                    "(set JITNET_DAVIS_ROOT to a DAVIS 2016 copy elsewhere)")
    return DAVIS_ROOT


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Width-0.5 person artifacts, exported once per test session (any multiple of 32 runs)."""
    from export.artifacts import generate

    out = tmp_path_factory.mktemp("artifacts") / "person"
    generate(out, class_names=["person"], width=0.5, height_px=128, width_px=192, seed=0)
    return out
