"""Frames you already hold as numpy arrays, scored against human masks.

A DAVIS 2016 sequence (JPEGImages/<seq>/*.jpg, Annotations/<seq>/*.png) is read into
RGB arrays and given to `session.segment` as a plain iterable; an embedded teacher
labels the frames the back-off controller picks, and every prediction is compared
with the human mask of the same frame.

    python examples/numpy_frames.py --root ../shared/data/davis2016 --sequence dog --group dog
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

import sdk
from core.config import DistillConfig


def read_sequence(root: Path, sequence: str, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB uint8 frames and boolean masks, in order."""
    images, masks = [], []
    for jpg in sorted((root / "JPEGImages" / sequence).glob("*.jpg"))[:frames or None]:
        png = root / "Annotations" / sequence / (jpg.stem + ".png")
        images.append(cv2.cvtColor(cv2.imread(str(jpg)), cv2.COLOR_BGR2RGB))
        masks.append(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) > 0)
    if not images:
        raise SystemExit(f"no frames under {root / 'JPEGImages' / sequence}; pass --root and --sequence")
    return images, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016")
    parser.add_argument("--sequence", default="dog")
    parser.add_argument("--group", default="dog", help="the teacher's class group for the object")
    parser.add_argument("--frames", type=int, default=0, help="0 = all")
    parser.add_argument("--teacher", default="embedded:yolov5s-seg")
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()

    images, masks = read_sequence(args.root, args.sequence, args.frames)
    ious, teacher_frames, updates = [], 0, 0
    config = DistillConfig(input_scale=0.5)
    with sdk.connect(args.teacher, threshold=args.threshold, config=config, classes=[args.group]) as session:
        for r, mask in zip(session.segment(iter(images)), masks):
            predicted = r.labels > 0
            union = np.logical_or(predicted, mask).sum()
            ious.append(float(np.logical_and(predicted, mask).sum() / union) if union else 1.0)
            teacher_frames += r.teacher_labelled
            updates += r.updates
    # One JSON line, so scripts (and tests/test_examples.py) can read the outcome.
    print(json.dumps({"sequence": args.sequence, "frames": len(ious), "teacher_frames": teacher_frames,
                      "updates": updates, "iou_vs_human_mean": round(float(np.mean(ious)), 4),
                      "iou_vs_human_last_half": round(float(np.mean(ious[len(ious) // 2:])), 4)}))


if __name__ == "__main__":
    main()
