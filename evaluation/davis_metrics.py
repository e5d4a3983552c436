"""DAVIS region similarity J and contour accuracy F, as the benchmark defines them.

Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video
Object Segmentation" (CVPR 2016), with the conventions of the official
davis2017-evaluation code so our numbers are comparable with published ones:

- J is the Jaccard index of two binary masks; two empty masks score 1.
- F is the F-measure of boundary precision and recall.  Boundaries are the
  one-pixel-wide maps of ``seg2bmap``; a boundary pixel counts as matched when
  the other boundary lies within a disk of radius ``ceil(bound_th * diagonal)``
  pixels (0.008 of the image diagonal: 8 px at 854x480).
- Per sequence, each measure is summarised as mean, recall (fraction of frames
  scoring above 0.5) and decay (mean of the first of 4 temporal bins minus
  mean of the last, bins overlapping by one frame as in the official code).
- In the semi-supervised protocol the first frame (given) and the last frame
  are left out of the statistics.

Only numpy and OpenCV: scikit-image is not needed for a disk.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np

#: Fraction of the image diagonal within which boundaries match (DAVIS default).
BOUND_TH = 0.008
#: Number of temporal bins used for the decay statistic (official code).
DECAY_BINS = 4


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask (H, W), got shape {mask.shape}")
    return mask.astype(bool)


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray, void: Optional[np.ndarray] = None) -> float:
    """Region similarity J: intersection over union, 1.0 when both masks are empty.

    An empty prediction of an empty object is a correct answer, which is why
    the benchmark scores it 1 rather than leaving it undefined.
    """
    gt = _as_bool(annotation, "annotation")
    seg = _as_bool(segmentation, "segmentation")
    if gt.shape != seg.shape:
        raise ValueError(f"annotation {gt.shape} and segmentation {seg.shape} differ in shape; resize the prediction first")
    keep = np.ones_like(gt) if void is None else ~_as_bool(void, "void")
    inter = np.count_nonzero(gt & seg & keep)
    union = np.count_nonzero((gt | seg) & keep)
    return 1.0 if union == 0 else inter / union


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (bool, same shape).

    A pixel is on the boundary when it differs from its east, south or
    south-east neighbour, so boundaries sit half a pixel towards the origin
    from the true edge -- the convention of Martin et al.'s BSDS code that
    DAVIS inherits; both masks get the same offset, so it cancels in F.
    """
    seg = _as_bool(seg, "seg")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    # Beyond the last row/column there is no neighbour: compare along the edge only.
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: int) -> np.ndarray:
    """Structuring element of the pixels within ``radius`` of the centre (uint8)."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"disk radius must be >= 0, got {radius}")
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r).astype(np.uint8)


def bound_pixels(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """Matching radius in pixels: ``bound_th`` itself if >= 1, else a fraction of the diagonal."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_precision_recall(
    foreground_mask: np.ndarray,
    gt_mask: np.ndarray,
    bound_th: float = BOUND_TH,
    void: Optional[np.ndarray] = None,
) -> tuple[float, float, float]:
    """(F, precision, recall) of the predicted boundary against the ground-truth one."""
    fg = _as_bool(foreground_mask, "foreground_mask")
    gt = _as_bool(gt_mask, "gt_mask")
    if fg.shape != gt.shape:
        raise ValueError(f"foreground_mask {fg.shape} and gt_mask {gt.shape} differ in shape; resize the prediction first")
    if void is not None:
        keep = ~_as_bool(void, "void")
        fg, gt = fg & keep, gt & keep
    fg_b = seg2bmap(fg)
    gt_b = seg2bmap(gt)
    kernel = disk(bound_pixels(fg.shape, bound_th))
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    # The official conventions when one or both boundaries are missing.
    if n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_fg == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(fg_b & gt_dil) / n_fg
        recall = np.count_nonzero(gt_b & fg_dil) / n_gt
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return float(f), float(precision), float(recall)


def f_measure(
    foreground_mask: np.ndarray,
    gt_mask: np.ndarray,
    bound_th: float = BOUND_TH,
    void: Optional[np.ndarray] = None,
) -> float:
    """Contour accuracy F: boundary F-measure with a tolerance of ``bound_th`` of the diagonal."""
    return boundary_precision_recall(foreground_mask, gt_mask, bound_th, void)[0]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, recall (fraction > 0.5) and decay of one measure over a sequence's frames.

    NaNs (frames that could not be scored) are ignored, as in the official
    code.  Decay splits the frames into 4 bins with the official index
    arithmetic (neighbouring bins share a frame) and subtracts the mean of the
    last bin from the mean of the first: positive decay means the method
    degrades over time.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("summarize() needs at least one per-frame value")
    finite = v[~np.isnan(v)]
    mean = float(finite.mean()) if finite.size else float("nan")
    recall = float((finite > 0.5).mean()) if finite.size else float("nan")
    # Official: ids = round(linspace(1, n, 5) + 1e-10) - 1 (it casts to uint8,
    # which wraps past 255 frames; int keeps long videos correct).
    ids = (np.round(np.linspace(1, v.size, DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(DECAY_BINS)]
    first, last = bins[0], bins[-1]
    first, last = first[~np.isnan(first)], last[~np.isnan(last)]
    decay = float(first.mean() - last.mean()) if first.size and last.size else float("nan")
    return {"mean": mean, "recall": recall, "decay": decay}


def evaluate_sequence(
    gt_masks: Sequence[np.ndarray],
    pred_masks: Sequence[np.ndarray],
    *,
    bound_th: float = BOUND_TH,
    skip_first_last: bool = True,
) -> dict[str, object]:
    """Per-frame J and F of one sequence and their statistics.

    With ``skip_first_last`` (the semi-supervised protocol) the first frame,
    whose mask the method was given, and the last frame are not scored.
    Returns ``{"J": summary, "F": summary, "J_frames": [...], "F_frames": [...],
    "frames": [scored frame indices]}``.
    """
    if len(gt_masks) != len(pred_masks):
        raise ValueError(
            f"{len(pred_masks)} predicted masks for {len(gt_masks)} ground-truth masks; predict every frame of the sequence"
        )
    indices = list(range(len(gt_masks)))
    if skip_first_last:
        indices = indices[1:-1]
    if not indices:
        raise ValueError(f"a sequence of {len(gt_masks)} frames has no frame left to score; it needs at least 3")
    j = [db_eval_iou(gt_masks[i], pred_masks[i]) for i in indices]
    f = [f_measure(pred_masks[i], gt_masks[i], bound_th) for i in indices]
    return {"J": summarize(j), "F": summarize(f), "J_frames": j, "F_frames": f, "frames": indices}
