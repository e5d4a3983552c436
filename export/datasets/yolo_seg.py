"""Ultralytics YOLO-seg polygon labels (``images/`` + ``labels/``), as label maps.

One text file per image, one instance per line: ``class x1 y1 x2 y2 ...``
with coordinates normalised to 0..1 of the image width and height.  Class
ids are COCO's 80 in order unless ``names=FILE`` gives the dataset's own
list (a ``data.yaml`` with ``names:``, or a text file with one name a line).
Lines with only a box (``class cx cy w h``) carry no mask and are skipped.
Overlaps go to the smaller instance, as for COCO JSON.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.groups import COCO_CLASSES
from export.coco import polygon_mask
from export.datasets.base import (Sample, SourceError, SourceSpec, check_options, every_nth, flag_option, group_lookup,
                                  int_option, list_images, read_rgb)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class YoloInstance:
    class_id: int
    label: int  # 1-based group label, 0 = not a requested group
    polygon: np.ndarray  # float (K, 2), normalised x, y


def read_label_file(path: Path) -> list[tuple[int, np.ndarray]]:
    """(class id, normalised (K, 2) polygon) per instance line of one YOLO-seg label file."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        try:
            cls, coords = int(values[0]), np.asarray([float(v) for v in values[1:]], np.float64)
        except ValueError:
            raise SourceError(f"{path}:{n}: expected 'class x1 y1 x2 y2 ...', got {line[:60]!r}") from None
        if coords.size == 4:
            continue  # a detection box, no mask
        if coords.size < 6 or coords.size % 2:
            raise SourceError(f"{path}:{n}: a polygon needs an even number (>= 6) of coordinates, got {coords.size}")
        out.append((cls, coords.reshape(-1, 2)))
    return out


def read_names(path: Path) -> list[str]:
    """Class names from a data.yaml (``names:`` list or {id: name}) or a one-name-a-line text file."""
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        names = (yaml.safe_load(text) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise SourceError(f"{path} has no 'names:' list")
    return [line.strip() for line in text.splitlines() if line.strip()]


class YoloSegSource:
    kind = "yolo-seg"

    def __init__(self, spec: SourceSpec, groups: Sequence[str]):
        self.spec, self.path, self.groups = spec, spec.path, list(groups)
        check_options(spec, ("split", "names"))
        self.image_dir, self.label_dir = self._folders(spec.take("split"))
        names_file = spec.take("names")
        self.names = read_names(Path(names_file)) if names_file else list(COCO_CLASSES)
        lookup = group_lookup(self.groups)
        self.class_labels = [lookup(n) for n in self.names]
        include_empty = flag_option(spec, "include_empty")
        limit = int_option(spec, "max")
        self.items: list[tuple[Path, list[YoloInstance]]] = []
        for image in every_nth(list_images(self.image_dir), spec):
            txt = self.label_dir / (image.stem + ".txt")
            instances = []
            for cls, poly in read_label_file(txt) if txt.is_file() else []:
                if not 0 <= cls < len(self.names):
                    raise SourceError(f"{txt}: class id {cls} is outside the {len(self.names)} names; pass names=FILE")
                instances.append(YoloInstance(cls, self.class_labels[cls], poly))
            if any(i.label for i in instances) or include_empty:
                self.items.append((image, instances))
            if limit is not None and len(self.items) >= limit:
                break
        if not self.items:
            raise SourceError(f"no image in {self.image_dir} has an instance of {self.groups}")
        log.info("%s: %d images with %s", self.path, len(self.items), ", ".join(self.groups))

    def _folders(self, split: Optional[str]) -> tuple[Path, Path]:
        root = self.path
        if not root.is_dir():
            raise SourceError(f"{root} is not a directory; pass the dataset folder with images/ and labels/ inside")
        images, labels = root / "images", root / "labels"
        if not images.is_dir() or not labels.is_dir():
            raise SourceError(f"{root} needs images/ and labels/ folders (the Ultralytics layout)")
        if split is None:
            subs = sorted(p.name for p in labels.iterdir() if p.is_dir())
            if not subs:
                return images, labels
            if len(subs) > 1:
                raise SourceError(f"{labels} has several splits ({', '.join(subs)}); choose one with split=NAME")
            split = subs[0]
        if not (images / split).is_dir() or not (labels / split).is_dir():
            raise SourceError(f"{root}: no images/{split} and labels/{split}")
        return images / split, labels / split

    def __len__(self) -> int:
        return len(self.items)

    def instances(self, index: int) -> list[YoloInstance]:
        return list(self.items[index][1])

    def __getitem__(self, index: int) -> Sample:
        path, instances = self.items[index]
        image = read_rgb(path)
        h, w = image.shape[:2]
        drawn = []
        for inst in instances:
            if not inst.label:
                continue
            xy = inst.polygon * (w, h)
            mask = polygon_mask([xy.ravel()], h, w)
            drawn.append((int(mask.sum()), inst.label, mask, xy))
        drawn.sort(key=lambda d: -d[0])  # smaller instances on top
        labels = np.zeros((h, w), np.uint8)
        for _, label, mask, _ in drawn:
            labels[mask] = label
        boxes = np.array([(xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()) for *_, xy in drawn],
                         np.float32).reshape(-1, 4)
        return Sample(image, labels, boxes, None, path.name)

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "images": len(self), "split": self.image_dir.name}
