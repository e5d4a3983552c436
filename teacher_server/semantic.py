"""Instances to a semantic label map, the way the paper turns Mask R-CNN into labels.

Detections scoring at least the threshold (0.5 by default) keep their masks
(already thresholded at 0.5 by the backend), their COCO class is merged into
the requested group, and everything else is background. Where masks overlap
the higher-scoring instance wins; ties go to the lower group index, then to
the earlier instance, so the same detections always give the same map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.groups import GroupSpec
from core.labels import Instance

#: The paper keeps detections with score >= 0.5.
DEFAULT_SCORE_THRESHOLD = 0.5
#: Soft instance masks become pixels where they exceed this.
MASK_THRESHOLD = 0.5


@dataclass
class Detections:
    """What a backend found in one frame, at the frame's own resolution.

    boxes: (N, 4) float32 x0, y0, x1, y1 in pixels; scores: (N,) float32;
    class_names: N COCO class names; masks: (N, H, W) bool, the pixels where
    the instance's soft mask exceeds MASK_THRESHOLD.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_names: Sequence[str]
    masks: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.masks.ndim != 3 or len(self.masks) != n:
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"{n} classes, masks {self.masks.shape}"
            )

    @classmethod
    def empty(cls, height: int, width: int) -> "Detections":
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_names=(),
            masks=np.zeros((0, height, width), bool),
        )

    def __len__(self) -> int:
        return len(self.class_names)


def instances_to_label_map(
    detections: Detections,
    spec: GroupSpec,
    shape: tuple[int, int],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> tuple[np.ndarray, list[Instance]]:
    """Paint the kept instances into a uint8 (H, W) map; return it and the kept instances.

    Instances (the teacher's answer type, core.labels.Instance) are returned
    best score first; boxes are clipped to the frame.
    """
    height, width = shape
    if detections.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {detections.masks.shape[1:]}, the frame is {(height, width)}")
    label_map = np.zeros((height, width), np.uint8)
    class_to_index = spec.class_to_index()
    kept = [
        (i, class_to_index[name])
        for i, name in enumerate(detections.class_names)
        if name in class_to_index and float(detections.scores[i]) >= score_threshold
    ]
    if not kept:
        return label_map, []
    idx = np.array([i for i, _ in kept])
    grp = np.array([g for _, g in kept])
    score = detections.scores[idx].astype(np.float64)
    # Painted in this order, the last writer wins: lowest score first; among
    # equal scores the higher group index and then the later instance go first.
    order = np.lexsort((-idx, -grp, score))
    for j in order:
        label_map[detections.masks[idx[j]]] = grp[j]
    instances = []
    for j in order[::-1]:
        x0, y0, x1, y1 = (float(v) for v in detections.boxes[idx[j]])
        instances.append(
            Instance(
                box=(
                    min(max(x0, 0.0), width), min(max(y0, 0.0), height),
                    min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                ),
                group=spec.names[grp[j] - 1],
                group_index=int(grp[j]),
                score=float(score[j]),
                class_name=detections.class_names[idx[j]],
            )
        )
    return label_map, instances
