"""Accuracy of a label map against a reference, as the paper measures it."""
from __future__ import annotations

from typing import Optional

import numpy as np


def confusion(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = reference, columns = prediction."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    idx = ref.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_ious(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """IoU per class; NaN where the class is in neither map."""
    cm = confusion(pred, ref, num_classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def mean_iou(
    pred: np.ndarray,
    ref: np.ndarray,
    num_classes: int,
    *,
    include_background: bool = False,
    empty: Optional[float] = 1.0,
) -> float:
    """Mean IoU over the classes present in either map.

    Background (class 0) is excluded by default, as in the paper's tables.
    When no foreground class is present in either map the prediction is
    perfect by definition and ``empty`` is returned.
    """
    ious = class_ious(pred, ref, num_classes)
    if not include_background:
        ious = ious[1:]
    present = ious[~np.isnan(ious)]
    if present.size == 0:
        return float("nan") if empty is None else float(empty)
    return float(present.mean())
