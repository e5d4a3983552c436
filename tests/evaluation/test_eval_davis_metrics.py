"""DAVIS J and F on masks whose answers are known by hand, and on real DAVIS masks."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import load_davis_frame

from evaluation.davis_metrics import (
    bound_pixels,
    boundary_precision_recall,
    db_eval_iou,
    disk,
    evaluate_sequence,
    f_measure,
    seg2bmap,
    summarize,
)

H, W = 480, 854  # DAVIS 480p: matching radius ceil(0.008 * 979.6) = 8 px


def square(y: int, x: int, side: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y : y + side, x : x + side] = True
    return m


def stripe(x: int, width: int) -> np.ndarray:
    """Full-height band: its boundary is two columns, so F is easy to count by hand."""
    m = np.zeros((H, W), bool)
    m[:, x : x + width] = True
    return m


def reference_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Boundary F by exact Euclidean distance (a different algorithm from dilation)."""
    pb, gb = seg2bmap(pred), seg2bmap(gt)
    d_to_g = cv2.distanceTransform((~gb).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d_to_p = cv2.distanceTransform((~pb).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    precision = np.mean(d_to_g[pb] <= radius + 1e-6)
    recall = np.mean(d_to_p[gb] <= radius + 1e-6)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_matching_radius_is_eight_pixels_at_davis_resolution():
    assert bound_pixels((H, W)) == 8
    assert bound_pixels((H, W), 3) == 3
    k = disk(8)
    assert k.shape == (17, 17) and k[8].sum() == 17 and k[0].sum() == 1 and (k == k.T).all()


def test_identical_masks_score_one():
    m = np.zeros((H, W), np.uint8)
    cv2.ellipse(m, (400, 240), (120, 80), 30, 0, 360, 1, -1)
    assert db_eval_iou(m, m) == 1.0
    assert f_measure(m, m) == 1.0


def test_far_apart_masks_score_zero():
    a, b = square(50, 50, 100), square(300, 500, 100)
    assert db_eval_iou(a, b) == 0.0
    assert f_measure(b, a) == 0.0


def test_touching_disjoint_masks_have_zero_j_but_matching_boundaries():
    a, b = stripe(100, 50), stripe(150, 50)  # b starts where a ends
    assert db_eval_iou(a, b) == 0.0
    assert f_measure(b, a) == pytest.approx(0.5)  # the shared edge matches, the far edges do not


@pytest.mark.parametrize("shift", [1, 5, 30, 60])
def test_shifted_square_j_is_overlap_over_union(shift):
    side = 100
    assert db_eval_iou(square(100, 100, side), square(100, 100 + shift, side)) == pytest.approx(
        (side - shift) / (side + shift)
    )


@pytest.mark.parametrize("dy,dx", [(0, 1), (0, 8), (8, 0), (3, 4), (5, 5)])
def test_shift_within_tolerance_keeps_f_at_one(dy, dx):
    # Every boundary pixel moves by sqrt(dy^2 + dx^2) <= 8 px, so all of them still match.
    gt, pred = square(100, 100, 100), square(100 + dy, 100 + dx, 100)
    assert db_eval_iou(gt, pred) < 1.0
    assert f_measure(pred, gt) == 1.0


def test_shift_beyond_tolerance_lowers_f_as_exact_distances_say():
    gt = square(100, 100, 100)
    for dy, dx in ((0, 9), (6, 6), (0, 12), (0, 30)):  # moved by more than 8 px
        pred = square(100 + dy, 100 + dx, 100)
        f = f_measure(pred, gt)
        assert 0.0 < f < 1.0
        assert f == pytest.approx(reference_f(pred, gt, 8), abs=1e-12)


def test_stripe_shifts_give_hand_counted_f():
    gt = stripe(300, 100)
    # Both edges move 20 px (> 8): no boundary pixel matches although the regions overlap.
    assert db_eval_iou(gt, stripe(320, 100)) == pytest.approx(80 / 120)
    assert f_measure(stripe(320, 100), gt) == 0.0
    # Narrow band moved 15 px: its left edge lands 5 px from the old right edge, so half of
    # each boundary matches: precision = recall = F = 1/2.
    gt, pred = stripe(300, 20), stripe(315, 20)
    f, precision, recall = boundary_precision_recall(pred, gt)
    assert (f, precision, recall) == pytest.approx((0.5, 0.5, 0.5))
    assert db_eval_iou(gt, pred) == pytest.approx(5 / 35)


def test_empty_masks():
    empty = np.zeros((H, W), bool)
    obj = square(10, 10, 50)
    assert db_eval_iou(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0
    assert db_eval_iou(obj, empty) == 0.0 and f_measure(empty, obj) == 0.0  # missed object
    assert db_eval_iou(empty, obj) == 0.0 and f_measure(obj, empty) == 0.0  # hallucinated object


def test_seg2bmap_marks_pixels_whose_east_south_or_southeast_neighbour_differs():
    seg = np.zeros((10, 10), bool)
    seg[5, 5] = True
    ys, xs = np.nonzero(seg2bmap(seg))
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(4, 4), (4, 5), (5, 4), (5, 5)]


def test_void_pixels_are_ignored():
    gt = square(100, 100, 100)
    pred = gt.copy()
    pred[100:200, 200:220] = True  # 20 extra columns to the right
    void = np.zeros((H, W), bool)
    void[:, 200:] = True
    assert db_eval_iou(gt, pred) == pytest.approx(100 / 120)
    assert db_eval_iou(gt, pred, void) == 1.0
    assert f_measure(pred, gt, void=void) == 1.0


def test_real_davis_mask_moved_within_tolerance(davis_root):
    _, mask = load_davis_frame("blackswan", 10)
    moved = np.roll(mask, (3, -3), axis=(0, 1))  # the swan is far from the image border
    assert db_eval_iou(mask, mask) == 1.0 and f_measure(mask, mask) == 1.0
    assert db_eval_iou(mask, moved) < 0.97
    assert f_measure(moved, mask) == 1.0  # boundaries 4.2 px apart, tolerance 8 px
    assert f_measure(moved, mask, bound_th=2) < 0.5  # tolerance 2 px


def test_summarize_mean_recall_decay_by_hand():
    values = [1.0, 1.0, 0.8, 0.8, 0.6, 0.6, 0.2, 0.2]
    # Official bins for 8 frames: [0..2], [2..4], [4..5], [5..7].
    s = summarize(values)
    assert s["mean"] == pytest.approx(0.65)
    assert s["recall"] == pytest.approx(0.75)
    assert s["decay"] == pytest.approx((1 + 1 + 0.8) / 3 - (0.6 + 0.2 + 0.2) / 3)
    assert summarize([0.7] * 20)["decay"] == pytest.approx(0.0)
    improving = summarize(np.linspace(0.2, 0.9, 50))
    assert improving["decay"] < 0 and improving["recall"] == pytest.approx(np.mean(np.linspace(0.2, 0.9, 50) > 0.5))


def test_summarize_ignores_nan_frames():
    s = summarize([1.0, float("nan"), 0.0, 1.0])
    assert s["mean"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert not math.isnan(s["decay"])


def test_summarize_long_sequence_uses_all_frames_in_last_bin():
    # The official uint8 cast would wrap at 256 frames; a falling sequence must still decay.
    values = np.linspace(1.0, 0.0, 400)
    assert summarize(values)["decay"] == pytest.approx(0.75, abs=0.01)


def test_evaluate_sequence_skips_given_first_and_last_frames():
    gt = [square(100, 100, 100)] * 6
    pred = [np.zeros((H, W), bool)] + [square(100, 100, 100)] * 4 + [np.zeros((H, W), bool)]
    res = evaluate_sequence(gt, pred)
    assert res["frames"] == [1, 2, 3, 4]
    assert res["J"]["mean"] == 1.0 and res["F"]["mean"] == 1.0
    assert evaluate_sequence(gt, pred, skip_first_last=False)["J"]["mean"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="predict every frame"):
        evaluate_sequence(gt, pred[:-1])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="resize"):
        db_eval_iou(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="resize"):
        f_measure(np.zeros((4, 4)), np.zeros((4, 5)))
