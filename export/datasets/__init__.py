"""Pre-training sources: the label formats people have, read as the student's label maps.

Every source yields :class:`Sample`\\ s for one run's class groups (``person``,
``auto``, ``bike``, ``animal`` or any COCO class name, in the run's order):
label 0 is background, label k the k-th group, and ``valid`` marks the pixels
the annotation actually says something about (CamVid's "unlabelled" does not).
Sources are named on the command line as ``KIND:PATH[,key=value...]``:

- ``coco:DIR``          COCO instances JSON (``annotations=FILE``, ``images=DIR``, ``split=NAME``)
- ``yolo-seg:DIR``      Ultralytics polygons, ``DIR/images/<split>`` + ``DIR/labels/<split>``
                        (``split=NAME``, ``names=FILE`` when the ids are not COCO's 80)
- ``semantic:IMAGES``   label PNGs, ``labels=DIR``, ``map=ID=GROUP;ID=GROUP``, ``ignore=ID;ID``
- ``camvid:DIR``        the CamVid layout with its mapping built in (``split=train|val``)

Any source also takes ``max=N`` (use the first N images), ``every=N`` (every
N-th image, for video frames), ``holdout=N`` (keep N of its images, seeded,
for validation only) and ``repeat=N`` (N random views of each training image
per epoch).  Teacher-distilled
labels need a teacher, which this side of the project never imports: the
top-level ``jitnet pretrain`` labels the frames once, caches them and hands
them over as a ``semantic:`` folder.
"""
from __future__ import annotations

from typing import Sequence

from export.datasets.base import (COMMON_OPTIONS, KINDS, Sample, Source, SourceError, SourceSpec, boxes_of_components,
                                  check_options, every_nth, flag_option, group_lookup, int_option, list_images,
                                  parse_source, read_rgb)
from export.datasets.coco_source import CocoSource
from export.datasets.semantic_png import SemanticSource
from export.datasets.yolo_seg import YoloSegSource

__all__ = ["COMMON_OPTIONS", "KINDS", "Sample", "Source", "SourceError", "SourceSpec", "boxes_of_components",
           "check_options", "every_nth", "flag_option", "group_lookup", "int_option", "list_images", "open_source",
           "parse_source", "read_rgb"]

#: kind -> reader; ``distilled`` has none here (it needs a teacher, see the module docstring).
READERS = {"coco": CocoSource, "yolo-seg": YoloSegSource, "semantic": SemanticSource, "camvid": SemanticSource}


def open_source(spec: SourceSpec | str, groups: Sequence[str]) -> Source:
    """The reader for one spec, for these class groups."""
    if isinstance(spec, str):
        spec = parse_source(spec)
    reader = READERS.get(spec.kind)
    if reader is None:
        raise SourceError(f"source {spec.text!r}: {spec.kind} labels need a teacher; run it through `jitnet pretrain`, "
                          "which labels the frames and passes them on as a semantic: folder")
    return reader(spec, groups)
