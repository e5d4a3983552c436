"""Which images train and which validate: seeded, so a rerun (or a resumed run) splits the same way."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from export.datasets import Source


def split_indices(n: int, val_images: Optional[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held-out) image indices; a seeded shuffle, so the split is reproducible."""
    if val_images is None:
        val_images = max(1, min(200, n // 20)) if n >= 2 else 0
    if val_images < 0 or val_images >= n:
        raise ValueError(f"cannot hold out {val_images} of {n} images; at least one must be left to train on")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[val_images:]), sorted(order[:val_images])


@dataclass
class Splits:
    """Training items (source index, image index) over all sources, and named validation sets."""

    train: list[tuple[int, int]]
    val: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def make_splits(sources: Sequence[Source], holdouts: Sequence[Optional[int]], val_sources: Sequence[int],
                val_images: Optional[int], seed: int, repeats: Optional[Sequence[Optional[int]]] = None) -> Splits:
    """Per-source ``holdout=N``, whole ``--val`` sources, else ``--val-images`` from the pooled training set.

    ``repeats`` (a source's ``repeat=N``) lists its training images N times per epoch, each time
    with its own random view: a small source is not drowned by a large one.
    """
    train: list[tuple[int, int]] = []
    val: dict[str, list[tuple[int, int]]] = {}
    explicit = bool(val_sources) or any(h for h in holdouts)
    for s, source in enumerate(sources):
        if s in val_sources:
            val[source_name(source)] = [(s, i) for i in range(len(source))]
            continue
        if holdouts[s]:
            tr, va = split_indices(len(source), holdouts[s], seed)
            val[f"{source_name(source)} (held out)"] = [(s, i) for i in va]
            train += [(s, i) for i in tr]
        else:
            train += [(s, i) for i in range(len(source))]
    if not explicit or val_images:
        tr, va = split_indices(len(train), val_images, seed)
        if va:
            val["held out"] = [train[i] for i in va]
        train = [train[i] for i in tr]
    if not train:
        raise ValueError("no training images left after the validation split")
    if repeats and any(r and r > 1 for r in repeats):
        train = [item for item in train for _ in range(max(1, repeats[item[0]] or 1))]
    return Splits(train, val)


def source_name(source: Source) -> str:
    """Short name of a source for the validation report: ``kind:folder`` (CamVid: ``/split`` when one is named)."""
    split = source.spec.take("split") if source.kind == "camvid" else None
    return f"{source.kind}:{Path(source.path).name}" + (f"/{split}" if split else "")
