"""What one pre-training example looks like: a view of exactly the training size, with its loss weights."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from core.config import DistillConfig
from core.geometry import STRIDE
from core.targets import box_weights
from export.augment import Augmentation, center_view, random_view
from export.datasets import Source


def parse_size(text: str) -> tuple[int, int]:
    """``"384x640"`` -> (384, 640), both multiples of 32 (JITNet's total stride)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 384x640, got {text!r}") from None
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise ValueError(f"size {h}x{w}: height and width must be positive multiples of {STRIDE}")
    return h, w


class ViewSet:
    """Map-style dataset of (image, labels, weights) views of items of several sources.

    ``items`` are (source index, image index) pairs.  The random view of item
    ``i`` in epoch ``e`` depends only on (seed, e, i), so runs are
    reproducible whatever the number of loader workers, and a resumed run
    sees the views the uninterrupted one would have.  Held-out sets
    (``train=False``) get the deterministic centre view.  Decoded samples are
    kept in memory (``cache``): pre-training sets here are small and decoding
    is a good part of an epoch on two cores.
    """

    def __init__(self, sources: Sequence[Source], items: Sequence[tuple[int, int]], size: tuple[int, int], *,
                 train: bool, config: DistillConfig = DistillConfig(), seed: int = 0,
                 augmentation: Optional[Augmentation] = None, cache: bool = True):
        self.sources, self.items, self.size = list(sources), list(items), size
        self.train, self.config, self.seed = train, config, seed
        self.augmentation = augmentation if augmentation is not None else Augmentation()
        self.cache: Optional[dict] = {} if cache else None
        #: Set by the loop before each epoch; loader workers are re-created every epoch and see it.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ``i`` at full size: image, labels and the online update's box weights (0 where unannotated)."""
        key = self.items[i]
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        s = self.sources[key[0]][key[1]]
        weights = box_weights(s.labels.shape, s.boxes, weight=self.config.box_weight, dilation=self.config.box_dilation)
        if s.valid is not None:
            weights = weights * s.valid
        out = (s.image, s.labels, weights.astype(np.float32))
        if self.cache is not None:
            self.cache[key] = out
        return out

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, labels, weights = self.sample(i)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            return random_view(image, labels, weights, self.size, rng, self.augmentation)
        return center_view(image, labels, weights, self.size)
