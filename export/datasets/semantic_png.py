"""Semantic label PNGs (one class id per pixel) with a mapping onto class groups.

``semantic:IMAGES,labels=LABELS,map=8=auto;9=person;10=bike,ignore=11``:
each image ``IMAGES/<stem>.*`` has ``LABELS/<stem>.png``; ids in the map
become the named group (a group of the run, or a COCO class inside one),
ids in ``ignore`` train nothing (weight 0), every other id is background.
``camvid:DIR[,split=train]`` is the CamVid layout (``DIR/<split>/`` +
``DIR/<split>annot/``) with its mapping built in: car -> auto,
pedestrian -> person, bicyclist -> bike (rider and bicycle are one label
there), 11 "unlabelled" ignored.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from export.datasets.base import (Sample, SourceError, SourceSpec, boxes_of_components, check_options, every_nth,
                                  flag_option, group_lookup, int_option, list_images, read_rgb)

log = logging.getLogger(__name__)

#: CamVid's 11 classes (SegNet version) and what this project makes of them.
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car",
                  "pedestrian", "bicyclist", "unlabelled")
CAMVID_MAP = {8: "auto", 9: "person", 10: "bike"}
CAMVID_IGNORE = (11,)


def parse_map(text: str, where: str) -> dict[int, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.replace("+", ";").split(";"))):
        key, eq, name = part.partition("=")
        if not eq:
            key, eq, name = part.partition(":")
        try:
            out[int(key)] = name.strip()
        except ValueError:
            raise SourceError(f"{where}: map entry {part!r} must look like ID=GROUP (e.g. 8=auto)") from None
    if not out:
        raise SourceError(f"{where}: map= names no ID=GROUP pair")
    return out


class SemanticSource:
    def __init__(self, spec: SourceSpec, groups: Sequence[str]):
        self.spec, self.groups, self.kind = spec, list(groups), spec.kind
        check_options(spec, ("split",) if spec.kind == "camvid" else ("labels", "map", "ignore"))
        if spec.kind == "camvid":
            split = spec.take("split", "train")
            self.path = spec.path
            self.image_dir, self.label_dir = spec.path / split, spec.path / f"{split}annot"
            mapping, ignore = dict(CAMVID_MAP), set(CAMVID_IGNORE)
        else:
            self.path = self.image_dir = spec.path
            if spec.take("labels") is None or spec.take("map") is None:
                raise SourceError(f"source {spec.text!r} needs labels=DIR and map=ID=GROUP;ID=GROUP")
            self.label_dir = Path(spec.take("labels"))
            mapping = parse_map(spec.take("map"), spec.text)
            ignore = {int(v) for v in filter(None, spec.take("ignore", "").replace("+", ";").split(";"))}
        for folder in (self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise SourceError(f"source {spec.text!r}: {folder} is not a directory")
        lookup = group_lookup(self.groups)
        self.mapping = {i: name for i, name in mapping.items()}
        # 256-entry tables: source id -> group label, and which ids train nothing.
        self.table = np.zeros(256, np.uint8)
        self.ignored = np.zeros(256, bool)
        for i in [*mapping, *ignore]:
            if not 0 <= i <= 255:
                raise SourceError(f"source {spec.text!r}: class id {i} does not fit a uint8 label PNG")
        for i, name in mapping.items():
            self.table[i] = lookup(name)
        self.ignored[list(ignore)] = True
        if not self.table.any():
            log.warning("%s: none of %s maps onto the groups %s; every pixel is background", spec.text,
                        sorted(set(mapping.values())), self.groups)
        include_empty = flag_option(spec, "include_empty", default=True)
        limit = int_option(spec, "max")
        self.items: list[tuple[Path, Path]] = []
        missing = 0
        for image in every_nth(list_images(self.image_dir), spec):
            label = self.label_dir / (image.stem + ".png")
            if not label.is_file():
                missing += 1
                continue
            self.items.append((image, label))
            if limit is not None and len(self.items) >= limit:
                break
        if missing:
            log.warning("%s: %d images have no label PNG in %s and are skipped", spec.text, missing, self.label_dir)
        if not include_empty:
            self.items = [it for it in self.items if self._labels(it[1])[0].any()]
        if not self.items:
            raise SourceError(f"source {spec.text!r}: no image in {self.image_dir} has a label PNG in {self.label_dir}")
        log.info("%s: %d images", spec.text, len(self.items))

    def _labels(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 2 or raw.dtype != np.uint8:
            raise SourceError(f"{path} is not a single-channel 8-bit label PNG")
        valid = ~self.ignored[raw]
        return self.table[raw], valid

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.items[index]
        image = read_rgb(image_path)
        labels, valid = self._labels(label_path)
        if labels.shape != image.shape[:2]:
            raise SourceError(f"{label_path} is {labels.shape[0]}x{labels.shape[1]} but {image_path} is "
                              f"{image.shape[0]}x{image.shape[1]}")
        return Sample(image, labels, boxes_of_components(labels), None if valid.all() else valid, image_path.name)

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "images": len(self),
                "labels": str(self.label_dir), "map": {str(k): v for k, v in sorted(self.mapping.items())}}
