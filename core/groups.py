"""Class groups: the names a camera asks for, and the COCO classes behind them.

The paper's cameras want coarse classes (a "person", an "auto"), while the
teacher speaks COCO. This is the only place that says which COCO classes make
up which group; the server, the labeler and the evaluation all read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

#: The 80 COCO classes, in the contiguous order the YOLO checkpoints use
#: (torchvision's 91-id list is the same names with gaps).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: Groups made of several COCO classes (the paper's "auto" and "bike", plus animals).
COMPOSITE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "auto": ("car", "truck", "bus"),
    "bike": ("bicycle", "motorcycle"),
    "animal": ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"),
}


def _canonical(name: str) -> str:
    """Accept "traffic_light", "Traffic-Light" and "traffic light" alike."""
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def _build_registry() -> dict[str, tuple[str, ...]]:
    registry = {name: (name,) for name in COCO_CLASSES}
    registry.update(COMPOSITE_GROUPS)
    return registry


#: Every group name -> its COCO classes. Each COCO class is a group of its own.
GROUPS: Mapping[str, tuple[str, ...]] = _build_registry()

#: Label maps are uint8 with 0 = background.
MAX_GROUPS = 255


class GroupError(ValueError):
    """A request named groups the server cannot honour."""


@dataclass(frozen=True)
class GroupSpec:
    """Requested groups resolved to COCO classes; group k (1-based) is label value k."""

    names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]

    def class_to_index(self) -> dict[str, int]:
        """COCO class name -> 1-based label value (classes not requested are absent)."""
        return {cls: k for k, members in enumerate(self.classes, start=1) for cls in members}


def resolve_groups(names: Sequence[str]) -> GroupSpec:
    """Check a camera's group list and expand it to COCO classes.

    Rejected, with a message that says what to send instead: an empty list, an
    unknown name, the same group twice, or two groups sharing a class (the
    label of such pixels would be ambiguous).
    """
    if len(names) == 0:
        raise GroupError("no class groups requested; ask for at least one, e.g. ['person']")
    if len(names) > MAX_GROUPS:
        raise GroupError(f"{len(names)} groups requested; at most {MAX_GROUPS} fit in a uint8 label map")
    resolved: list[tuple[str, ...]] = []
    owner: dict[str, str] = {}
    seen: set[str] = set()
    for raw in names:
        key = _canonical(raw)
        if key not in GROUPS:
            raise GroupError(
                f"unknown class group {raw!r}; known groups: {', '.join(sorted(COMPOSITE_GROUPS))}"
                " and every COCO class name (e.g. person, dog, car)"
            )
        if key in seen:
            raise GroupError(f"class group {raw!r} requested twice")
        seen.add(key)
        for cls in GROUPS[key]:
            if cls in owner:
                raise GroupError(
                    f"class {cls!r} is in both {owner[cls]!r} and {raw!r}; request only one of them"
                )
            owner[cls] = raw
        resolved.append(GROUPS[key])
    return GroupSpec(names=tuple(names), classes=tuple(resolved))


def known_groups() -> dict[str, tuple[str, ...]]:
    """A copy of the registry, for GetInfo and documentation."""
    return dict(GROUPS)

