"""Per-pixel loss weights from teacher boxes (the paper's 5x inside dilated boxes)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def box_weights(
    shape: tuple[int, int],
    boxes: Iterable[Sequence[float]],
    *,
    weight: float = 5.0,
    dilation: float = 0.15,
) -> np.ndarray:
    """float32 (H, W) map: ``weight`` inside every box grown by ``dilation``, 1 elsewhere.

    Objects are a small part of most frames; weighting them keeps the student
    from learning "everything is background".  Each box grows by ``dilation``
    times its width and height (half on each side) so object borders, where
    the student is least sure, are inside the weighted region.
    """
    h, w = shape
    out = np.ones((h, w), np.float32)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(np.isfinite((x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
            continue
        gx, gy = (x1 - x0) * dilation / 2.0, (y1 - y0) * dilation / 2.0
        c0, c1 = int(np.floor(max(0.0, x0 - gx))), int(np.ceil(min(float(w), x1 + gx)))
        r0, r1 = int(np.floor(max(0.0, y0 - gy))), int(np.ceil(min(float(h), y1 + gy)))
        if c1 > c0 and r1 > r0:
            out[r0:r1, c0:c1] = weight
    return out
