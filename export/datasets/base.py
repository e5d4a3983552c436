"""What every pre-training source shares: the spec grammar, the sample type and the pixel helpers.

The readers (``coco_source``, ``yolo_seg``, ``semantic_png``) import this
module, never the package: :mod:`export.datasets` picks a reader by kind and
so imports them, and the arrow must point one way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

import cv2
import numpy as np

from core.groups import GROUPS, resolve_groups


class SourceError(ValueError):
    """A source spec or folder is not what its reader expects; the message says what to pass."""


@dataclass(frozen=True)
class Sample:
    """One training image: pixels, label map over the run's groups, object boxes."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    labels: np.ndarray  # uint8 (H, W), 0 = background, k = group k
    boxes: np.ndarray  # float32 (N, 4) x0, y0, x1, y1 of the group objects
    valid: Optional[np.ndarray] = None  # bool (H, W); None = every pixel is annotated
    name: str = ""


class Source(Protocol):
    """A reader of one labelled image collection, for one run's class groups."""

    kind: str
    path: Path
    spec: "SourceSpec"

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class SourceSpec:
    """``KIND:PATH[,key=value...]`` as parsed from the command line."""

    kind: str
    path: Path
    options: dict = field(default_factory=dict)
    text: str = ""

    def take(self, key: str, default=None):
        return self.options.get(key, default)


KINDS = ("coco", "yolo-seg", "semantic", "camvid", "distilled")
COMMON_OPTIONS = {"max", "every", "holdout", "repeat", "include_empty"}


def parse_source(text: str) -> SourceSpec:
    """Parse ``yolo-seg:../data/coco128-seg,holdout=16`` into a :class:`SourceSpec`."""
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower().replace("_", "-")
    if not sep or kind not in KINDS:
        raise SourceError(f"source {text!r} must look like KIND:PATH[,key=value...] with KIND one of "
                          f"{', '.join(KINDS)} (e.g. yolo-seg:data/coco128-seg)")
    parts = rest.split(",")
    path, options = parts[0].strip(), {}
    if not path:
        raise SourceError(f"source {text!r} names no path after {kind}:")
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise SourceError(f"source {text!r}: option {part!r} must look like key=value")
        options[key.strip().replace("-", "_")] = value.strip()
    return SourceSpec(kind, Path(path), options, text)


def check_options(spec: SourceSpec, own: Sequence[str]) -> None:
    """Refuse options the reader does not know: a typo would otherwise be ignored without a word."""
    unknown = set(spec.options) - COMMON_OPTIONS - set(own)
    if unknown:
        raise SourceError(f"source {spec.text!r}: unknown option(s) {sorted(unknown)}; {spec.kind} takes "
                          f"{', '.join([*own, *sorted(COMMON_OPTIONS)])}")


def flag_option(spec: SourceSpec, key: str, default: bool = False) -> bool:
    """``key=1|true|yes`` (anything else is false); ``default`` when the option is absent."""
    value = spec.options.get(key)
    return default if value is None else str(value).lower() in ("1", "true", "yes")


def int_option(spec: SourceSpec, key: str) -> Optional[int]:
    """A whole-number option >= 0, None when absent."""
    value = spec.options.get(key)
    if value is None:
        return None
    try:
        out = int(value)
    except ValueError:
        raise SourceError(f"source {spec.text!r}: {key}={value!r} is not a whole number") from None
    if out < 0:
        raise SourceError(f"source {spec.text!r}: {key} must be >= 0")
    return out


def group_lookup(groups: Sequence[str]):
    """name -> 1-based label for these groups: a group's own name or any COCO class inside it; 0 if none."""
    spec = resolve_groups(list(groups))
    by_class = spec.class_to_index()
    by_name = {_canonical(n): k for k, n in enumerate(spec.names, start=1)}

    def lookup(name: str) -> int:
        key = _canonical(name)
        if key in by_name:
            return by_name[key]
        members = GROUPS.get(key, (key,))
        labels = {by_class[m] for m in members if m in by_class}
        return labels.pop() if len(labels) == 1 else 0

    return lookup


def _canonical(name: str) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8, in its stored pixel order."""
    # Label files are in the stored pixel order: never apply EXIF rotation.
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise SourceError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def boxes_of_components(labels: np.ndarray, min_area: int = 4) -> np.ndarray:
    """Boxes of the connected regions of every group in a label map (semantic sources have no instances)."""
    out = []
    for k in np.unique(labels):
        if k == 0:
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats((labels == k).astype(np.uint8), connectivity=8)
        for x, y, w, h, area in stats[1:]:
            if area >= min_area:
                out.append((x, y, x + w, y + h))
    return np.asarray(out, np.float32).reshape(-1, 4)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder, in name order (video frames stay in time order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def every_nth(items: list, spec: SourceSpec) -> list:
    """``every=N``: every N-th item (consecutive video frames say almost the same thing)."""
    n = int_option(spec, "every")
    return items[::n] if n and n > 1 else items
