"""Mean IoU as the paper's tables use it: background excluded, over the classes present."""
import math

import numpy as np

from core.metrics import class_ious, mean_iou
from evaluation.baselines import Scorer


def maps():
    ref = np.zeros((10, 10), np.uint8)
    ref[0:4, 0:5] = 1          # class 1: 20 pixels
    pred = ref.copy()
    pred[0:4, 4] = 0           # 16 of them predicted
    pred[6:8, 6:8] = 2         # class 2 only in the prediction: IoU 0
    return pred, ref


def test_background_is_excluded_and_only_present_classes_count():
    pred, ref = maps()
    ious = class_ious(pred, ref, num_classes=4)
    assert ious[1] == 16 / 20 and ious[2] == 0.0 and math.isnan(ious[3])
    # Class 3 is in neither map: it does not pull the mean down.
    assert mean_iou(pred, ref, 4) == (16 / 20 + 0.0) / 2
    assert mean_iou(pred, ref, 4, include_background=True) == (ious[0] + 16 / 20 + 0.0) / 3


def test_identical_maps_score_one_and_empty_frames_follow_the_chosen_rule():
    pred, ref = maps()
    assert mean_iou(ref, ref, 3) == 1.0
    empty = np.zeros((4, 4), np.uint8)
    assert mean_iou(empty, empty, 3) == 1.0                      # the controller: nothing to learn
    assert math.isnan(mean_iou(empty, empty, 3, empty=None))


def test_the_evaluation_scorer_skips_frames_with_no_class_and_averages_classes_where_present():
    pred, ref = maps()
    scorer = Scorer(["a", "b", "c"])
    scorer.add(pred, ref)
    scorer.add(np.zeros_like(ref), np.zeros_like(ref))           # not scored
    scorer.add(ref, ref)
    assert scorer.mean_iou == ((16 / 20 + 0.0) / 2 + 1.0) / 2
    assert scorer.iou_per_group == {"a": (16 / 20 + 1.0) / 2, "b": 0.0, "c": None}
