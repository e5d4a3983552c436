"""A tiny COCO-format dataset built from real DAVIS frames and their human masks.

Each DAVIS sequence becomes one COCO category; its masks are written the
three ways COCO stores them: polygons (from cv2.findContours), uncompressed
RLE (a counts list, as COCO's crowd annotations) and compressed RLE (the
string pycocotools' own encoder writes).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tests.conftest import DAVIS_ROOT

#: COCO's own category ids (non-contiguous, as in instances_*.json).
CATEGORIES = {"person": 1, "car": 3, "dog": 18}

#: sequence -> (COCO category, how its masks are encoded)
SEQUENCES = {
    "breakdance": ("person", "polygon"),
    "dog": ("dog", "polygon"),
    "car-shadow": ("car", "rle"),
    "kite-surf": ("person", "rle-compressed"),
}


@dataclass(frozen=True)
class FixtureImage:
    file_name: str
    sequence: str
    frame: int
    encoding: str
    mask: np.ndarray  # the human DAVIS mask, bool (H, W)


def davis_mask(sequence: str, frame: int) -> np.ndarray:
    mask = cv2.imread(str(DAVIS_ROOT / "Annotations" / sequence / f"{frame:05d}.png"), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        pytest.skip(f"DAVIS mask {sequence}/{frame} missing under {DAVIS_ROOT}: it comes from the workspace's ../shared/data")
    return mask > 0


def polygons_of(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons through the centres of the boundary pixels (COCO puts centres at +0.5)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [(c.reshape(-1, 2) + 0.5).reshape(-1).tolist() for c in contours if len(c) >= 3]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's counts-list RLE: run lengths over the column-major pixels, starting with background."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def encode(mask: np.ndarray, encoding: str):
    if encoding == "polygon":
        return polygons_of(mask)
    if encoding == "rle":
        return uncompressed_rle(mask)
    if encoding == "rle-compressed":
        return compressed_rle(mask)
    raise ValueError(encoding)


def write_coco(
    root: Path,
    frames: tuple[int, ...] = (10, 15, 20, 25),
    sequences: dict[str, tuple[str, str]] = SEQUENCES,
    split: str = "mini",
    extra_annotations: list[dict] = (),
) -> list[FixtureImage]:
    """Write ``root/annotations/instances_<split>.json`` and ``root/<split>/*.jpg`` (COCO's layout)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations, written = [], [], []
    for sequence, (category, encoding) in sequences.items():
        for frame in frames:
            image_id = len(images) + 1
            file_name = f"{sequence}_{frame:05d}.jpg"
            shutil.copy(DAVIS_ROOT / "JPEGImages" / sequence / f"{frame:05d}.jpg", root / split / file_name)
            mask = davis_mask(sequence, frame)
            h, w = mask.shape
            ys, xs = np.nonzero(mask)
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            annotations.append({
                "id": 1000 + image_id, "image_id": image_id, "category_id": CATEGORIES[category],
                "segmentation": encode(mask, encoding), "area": float(mask.sum()),
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                "iscrowd": int(encoding == "rle"),
            })
            written.append(FixtureImage(file_name, sequence, frame, encoding, mask))
    annotations.extend(extra_annotations)
    blob = {
        "info": {"description": "DAVIS 2016 frames as COCO instances (test fixture)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "x"} for n, i in CATEGORIES.items()],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(blob))
    return written
