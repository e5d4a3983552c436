"""COCO instances JSON (export.coco) as a pre-training source."""
from __future__ import annotations

from typing import Sequence

from export.coco import CocoDataset, CocoLayoutError
from export.datasets.base import Sample, SourceError, SourceSpec, check_options, flag_option, int_option


class CocoSource:
    """COCO instances JSON over the run's groups (see :class:`export.coco.CocoDataset`)."""

    kind = "coco"

    def __init__(self, spec: SourceSpec, groups: Sequence[str]):
        check_options(spec, ("annotations", "images", "split"))
        self.spec, self.path = spec, spec.path
        try:
            self.coco = CocoDataset(spec.path, groups, annotations=spec.take("annotations"), images=spec.take("images"),
                                    split=spec.take("split"), max_images=int_option(spec, "max"),
                                    include_empty=flag_option(spec, "include_empty"))
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
