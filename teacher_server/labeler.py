"""The teacher without the network: frames + class groups -> label maps + instances.

The gRPC server batches requests into `Labeler.label_batch`; evaluation code
calls `Labeler.label` directly to compute the teacher's labels as ground truth,
so both paths produce the same maps from the same rule. Both get the answer
type every side shares, core.labels.TeacherLabels (frame_index is the
caller's: 0 unless given).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from core.groups import GroupSpec, resolve_groups
from core.labels import TeacherLabels
from teacher_server.backends.base import TeacherBackend
from teacher_server.semantic import DEFAULT_SCORE_THRESHOLD, instances_to_label_map


def _spec(groups: Union[Sequence[str], GroupSpec]) -> GroupSpec:
    return groups if isinstance(groups, GroupSpec) else resolve_groups(list(groups))


class Labeler:
    """A backend plus the paper's instances-to-labels rule."""

    def __init__(self, backend: TeacherBackend, *, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.backend = backend
        self.score_threshold = float(score_threshold)

    @classmethod
    def from_name(cls, backend: str, *, weights: Optional[str] = None, device: str = "cpu", **options: Any) -> "Labeler":
        """Load a backend by registry name (e.g. "yolov5s-seg") and wrap it."""
        from teacher_server.backends.registry import load_backend

        return cls(load_backend(backend, weights=weights, device=device, **options))

    @property
    def model_name(self) -> str:
        return self.backend.name

    @property
    def model_version(self) -> str:
        return self.backend.version

    def label(
        self,
        frame: np.ndarray,
        groups: Union[Sequence[str], GroupSpec],
        score_threshold: Optional[float] = None,
        *,
        frame_index: int = 0,
    ) -> TeacherLabels:
        """Label one RGB uint8 frame for the given class groups (e.g. ["person", "auto"])."""
        return self.label_batch([frame], [groups], [score_threshold], frame_indices=[frame_index])[0]

    def label_batch(
        self,
        frames: Sequence[np.ndarray],
        groups: Sequence[Union[Sequence[str], GroupSpec]],
        score_thresholds: Optional[Sequence[Optional[float]]] = None,
        *,
        frame_indices: Optional[Sequence[int]] = None,
    ) -> list[TeacherLabels]:
        """Label frames of any sizes in one backend call; each frame has its own groups and threshold."""
        if len(groups) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(groups)} group lists")
        thresholds = [
            self.score_threshold if t is None else float(t)
            for t in (score_thresholds if score_thresholds is not None else [None] * len(frames))
        ]
        if len(thresholds) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(thresholds)} score thresholds")
        for t in thresholds:
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"score threshold must be in [0, 1], got {t}")
        specs = [_spec(g) for g in groups]
        if not frames:
            return []
        output = self.backend.predict(frames, min(thresholds))
        results = []
        indices = list(frame_indices) if frame_indices is not None else [0] * len(frames)
        if len(indices) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(indices)} frame indices")
        for frame, index, spec, threshold, detections in zip(frames, indices, specs, thresholds, output.detections):
            start = time.perf_counter()
            label_map, instances = instances_to_label_map(detections, spec, frame.shape[:2], threshold)
            results.append(
                TeacherLabels(
                    frame_index=index,
                    label_map=label_map,
                    instances=instances,
                    groups=spec.names,
                    model_name=self.backend.name,
                    model_version=self.backend.version,
                    timings={
                        "inference_ms": output.inference_s * 1e3,
                        "postprocess_ms": (output.postprocess_s + time.perf_counter() - start) * 1e3,
                        "batch_size": float(len(frames)),
                    },
                )
            )
        return results
