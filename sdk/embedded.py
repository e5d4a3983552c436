"""The teacher that runs in this process: what ``--teacher embedded[:NAME]`` means, in one place.

`jitnet run`, `jitnet demo`, the SDK's ``connect("embedded")``, the evaluations
and the benchmarks all read a teacher spec; a spec that names no backend runs
:data:`EMBEDDED_TEACHER`.  This module imports nothing heavy, so command-line
help can name the default without loading a runtime.
"""
from __future__ import annotations

from typing import Optional

#: A teacher spec ``embedded`` or ``embedded:NAME`` runs the teacher in this process.
EMBEDDED = "embedded"
#: What ``embedded`` alone runs: yolov7-seg, the more accurate of the two bundled YOLO teachers.
#: The demo, the evaluations and the shipped student's distilled frames use it, and a student
#: learns from its teacher's mistakes too.  It costs 143 GFLOPs a frame at 640x640 against
#: yolov5s-seg's 26: name ``embedded:yolov5s-seg`` where the teacher's speed matters more than
#: its labels (the examples, `jitnet bench soak`).
EMBEDDED_TEACHER = "yolov7-seg"


def embedded_teacher(spec: Optional[str]) -> Optional[str]:
    """The backend an ``embedded[:NAME]`` teacher spec runs (EMBEDDED_TEACHER when unnamed); None for a URL."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec == EMBEDDED:
        return EMBEDDED_TEACHER
    if spec.startswith(EMBEDDED + ":"):
        return spec.split(":", 1)[1].strip() or EMBEDDED_TEACHER
    return None
