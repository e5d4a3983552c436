"""COCO instances JSON (export.coco) as a pre-training source."""
from __future__ import annotations

from typing import Sequence

from export.coco import CocoDataset, CocoLayoutError
from export.datasets import Sample, SourceError, SourceSpec, int_option


class CocoSource:
    kind = "coco"

    def __init__(self, spec: SourceSpec, groups: Sequence[str]):
        unknown = set(spec.options) - {"annotations", "images", "split", "max", "every", "holdout", "repeat", "include_empty"}
        if unknown:
            raise SourceError(f"source {spec.text!r}: unknown option(s) {sorted(unknown)}; "
                              "coco takes annotations, images, split, max, holdout, include_empty")
        self.spec, self.path = spec, spec.path
        try:
            self.coco = CocoDataset(spec.path, groups, annotations=spec.take("annotations"), images=spec.take("images"),
                                    split=spec.take("split"), max_images=int_option(spec, "max"),
                                    include_empty=str(spec.take("include_empty", "0")).lower() in ("1", "true", "yes"))
        except CocoLayoutError as exc:
            raise SourceError(str(exc)) from None

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> Sample:
        s = self.coco[index]
        return Sample(s.image, s.labels, s.boxes, None, self.coco.images[index].path.name)

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "images": len(self),
                "annotations": str(self.coco.annotation_file)}
