"""The paper's knobs, in one place, with the paper's defaults.

Mullapudi et al., "Online Model Distillation for Efficient Video Inference"
(ICCV 2019), Algorithm 1 and Section 4.  Every other module reads its knobs
from here instead of growing flags of its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class DistillConfig:
    """Online distillation settings (defaults are the paper's)."""

    #: Mean IoU against the teacher that ends training on a teacher frame
    #: (the paper reports 0.7, 0.8 and 0.9).
    accuracy_threshold: float = 0.8
    #: Smallest and largest number of frames between teacher frames.
    min_stride: int = 8
    max_stride: int = 64
    #: At most this many gradient steps per teacher frame (u_max).
    max_updates: int = 8
    #: SGD with momentum over all layers.
    learning_rate: float = 0.01
    momentum: float = 0.9
    #: Loss weight of pixels inside teacher boxes (1 elsewhere) and how much
    #: the boxes are grown (fraction of their width/height) before weighting.
    box_weight: float = 5.0
    box_dilation: float = 0.15
    #: Frames are resized by this factor before the student sees them, then
    #: padded to a multiple of 32 (JITNet's total stride).
    input_scale: float = 1.0
    #: Teacher detections below this score are ignored.
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.accuracy_threshold <= 1.0:
            raise ValueError(f"accuracy_threshold must be in (0, 1], got {self.accuracy_threshold}")
        if not 1 <= self.min_stride <= self.max_stride:
            raise ValueError(
                f"need 1 <= min_stride <= max_stride, got {self.min_stride} and {self.max_stride}"
            )
        if self.max_updates < 1:
            raise ValueError(f"max_updates must be >= 1, got {self.max_updates}")
        if self.learning_rate <= 0 or not 0 <= self.momentum < 1:
            raise ValueError("learning_rate must be > 0 and momentum in [0, 1)")
        if self.box_weight < 1 or self.box_dilation < 0:
            raise ValueError("box_weight must be >= 1 and box_dilation >= 0")
        if self.input_scale <= 0:
            raise ValueError(f"input_scale must be > 0, got {self.input_scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DistillConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(values))
