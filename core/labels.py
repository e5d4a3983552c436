"""The teacher's answer as both sides see it, and the wire's retry hint.

One definition for the agent, the evaluation's cached teacher and the benchmarks, so
a label from the network and a label from the cache are the same object.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Trailing-metadata key with which the teacher says, in milliseconds, when to come back.
RETRY_AFTER_KEY = "retry-after-ms"


@dataclass(frozen=True)
class Instance:
    """A teacher detection in the label map: box in pixels (x0, y0, x1, y1), group_index 1-based."""

    box: tuple[float, float, float, float]
    group: str
    group_index: int
    score: float
    class_name: str = ""


@dataclass
class TeacherLabels:
    """The teacher's answer for one frame: label_map uint8 (H, W), 0 = background, k = groups[k-1]."""

    frame_index: int
    label_map: np.ndarray
    instances: list[Instance]
    groups: tuple[str, ...]
    model_name: str
    model_version: str
    timings: dict[str, float] = field(default_factory=dict)
    #: Client-side wall time for the whole call, retries included.
    latency_s: float = 0.0
    attempts: int = 1
    #: Serialized bytes the network carried for this call, every attempt included: requests (frame up)
    #: and the answer (labels down); see edge_agent.teacher.
    bytes_up: int = 0
    bytes_down: int = 0
    #: The teacher is saturated: stretch the interval to the next teacher frame by this factor (1 = no change).
    stride_stretch: float = 1.0
