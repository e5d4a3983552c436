"""The supplement's augmentation (one home, export/augment.py): a view never trains a pixel it invented,
its geometry moves image, labels and weights together, and the same rng state gives the same view."""
from __future__ import annotations

import numpy as np

from export.augment import Augmentation, frame_view, random_view
from tests.conftest import load_davis_frame

STILL = Augmentation(flip=0.0, scale_range=(1.0, 1.0), shift=0.0, rotate_deg=0.0, blur_prob=0.0, noise_std=0.0)


def _frame():
    image, mask = load_davis_frame("dog", 0)
    return image, mask.astype(np.uint8), np.ones(mask.shape, np.float32)


def test_a_mirror_only_frame_view_is_the_mirrored_frame():
    image, labels, weights = _frame()
    rng = np.random.default_rng(0)
    same = frame_view(image, labels, weights, rng, STILL)
    assert all(np.array_equal(a, b) for a, b in zip(same, (image, labels, weights)))
    mirrored = frame_view(image, labels, weights, rng, Augmentation(**{**STILL.__dict__, "flip": 1.0}))
    for got, want in zip(mirrored, (image, labels, weights)):
        np.testing.assert_array_equal(got, want[:, ::-1])


def test_frame_views_keep_the_size_and_never_train_the_border_they_bring_in():
    image, labels, weights = _frame()
    rng = np.random.default_rng(1)
    invented = 0
    for _ in range(12):
        img, lab, w = frame_view(image, np.ones_like(labels), weights, rng)
        assert img.shape == image.shape and img.dtype == np.uint8 and lab.shape == w.shape == labels.shape
        assert set(np.unique(w)) <= {0.0, 1.0}
        assert not lab[w == 0].any()  # pixels from outside the frame: background, weight 0
        invented += int((w == 0).any())
    assert invented >= 6  # a 10% shift or a 5-degree turn brings in border on most draws


def test_the_same_rng_state_gives_the_same_view():
    image, labels, weights = _frame()
    for view in (lambda rng: frame_view(image, labels, weights, rng),
                 lambda rng: random_view(image, labels, weights, (192, 320), rng)):
        a, b = view(np.random.default_rng(7)), view(np.random.default_rng(7))
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        c = view(np.random.default_rng(8))
        assert not np.array_equal(a[0], c[0])


def test_geometric_only_changes_no_pixel_value_and_the_default_adds_noise():
    image = np.full((96, 128, 3), 77, np.uint8)
    labels = np.zeros((96, 128), np.uint8)
    weights = np.ones((96, 128), np.float32)
    rng = np.random.default_rng(3)
    for _ in range(5):
        plain, _, _ = random_view(image, labels, weights, (64, 96), rng, Augmentation.geometric_only())
        assert (plain == 77).all()  # scale, crop, flip and edge padding of a flat image: still flat
        noisy, _, _ = random_view(image, labels, weights, (64, 96), rng)
        assert not (noisy == 77).all()
