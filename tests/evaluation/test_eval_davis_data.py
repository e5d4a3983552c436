"""Reading DAVIS-layout folders: the real data, the 2017 layout, and broken folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import load_davis_frame

from evaluation.davis_data import DavisLayoutError, LazyFrames, list_sequences, load_sequence


def make_root(tmp: Path, davis_root: Path, seq: str, n_frames: int, n_masks: int, resolution: str = "") -> Path:
    """A small DAVIS-layout copy of the first frames of a real sequence."""
    images = tmp / "JPEGImages" / resolution / seq
    annotations = tmp / "Annotations" / resolution / seq
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for i in range(n_frames):
        shutil.copy(davis_root / "JPEGImages" / seq / f"{i:05d}.jpg", images)
    for i in range(n_masks):
        shutil.copy(davis_root / "Annotations" / seq / f"{i:05d}.png", annotations)
    return tmp


def test_lists_the_real_sequences(davis_root):
    assert list_sequences(davis_root) == ["blackswan", "breakdance", "car-shadow", "dog", "horsejump-high", "kite-surf"]


def test_loads_frames_as_rgb_and_masks_as_bool(davis_root):
    frames, masks = load_sequence(davis_root, "car-shadow")
    assert len(frames) == len(masks) == 40
    assert frames[0].dtype == np.uint8 and frames[0].shape == (480, 854, 3)
    assert masks[0].dtype == bool and masks[0].shape == (480, 854)
    ref_frame, ref_mask = load_davis_frame("car-shadow", 7)
    assert np.array_equal(frames[7], ref_frame) and np.array_equal(masks[7], ref_mask)
    assert 0.01 < masks[7].mean() < 0.5  # a car, not the whole frame


def test_lazy_frames_decode_on_demand(davis_root):
    seq = load_sequence(davis_root, "blackswan", lazy=True)
    assert isinstance(seq.frames, LazyFrames) and len(seq.frames) == 50
    assert np.array_equal(seq.frames[12], load_davis_frame("blackswan", 12)[0])
    assert len(seq.frames[3:6]) == 3
    assert sum(1 for _ in seq.frames) == 50


def test_bad_root_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DavisLayoutError, match="JPEGImages"):
        list_sequences(tmp_path)
    with pytest.raises(DavisLayoutError, match="JPEGImages"):
        load_sequence(tmp_path / "missing", "blackswan")


def test_unknown_sequence_lists_the_available_ones(davis_root):
    with pytest.raises(DavisLayoutError, match="available: blackswan"):
        load_sequence(davis_root, "no-such-sequence")


def test_mismatched_frame_and_mask_counts_are_reported(tmp_path, davis_root):
    root = make_root(tmp_path, davis_root, "dog", n_frames=4, n_masks=3)
    with pytest.raises(DavisLayoutError, match=r"4 frames but 3 masks.*00003"):
        load_sequence(root, "dog")


def _shrink(root, relative: str) -> None:
    """Halve one frame or mask of a copied sequence, so that it no longer fits the others."""
    import cv2

    path = root / relative
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (427, 240)))


def test_frames_and_masks_of_different_size_are_reported(tmp_path, davis_root):
    root = make_root(tmp_path, davis_root, "dog", n_frames=3, n_masks=3)
    _shrink(root, "Annotations/dog/00001.png")
    with pytest.raises(DavisLayoutError, match="different sizes"):
        load_sequence(root, "dog")


def test_davis_2017_layout_with_resolution_folder(tmp_path, davis_root):
    root = make_root(tmp_path, davis_root, "kite-surf", n_frames=3, n_masks=3, resolution="480p")
    assert list_sequences(root) == ["kite-surf"]
    frames, masks = load_sequence(root, "kite-surf")
    assert len(frames) == 3 and masks[2].any()


def test_frames_of_another_size_than_their_masks_are_reported(tmp_path, davis_root):
    root = make_root(tmp_path, davis_root, "dog", n_frames=3, n_masks=3)
    _shrink(root, "JPEGImages/dog/00002.jpg")
    with pytest.raises(DavisLayoutError, match="00002.jpg is 427x240 but masks are 854x480"):
        load_sequence(root, "dog")
    assert len(load_sequence(root, "dog", lazy=True).frames) == 3  # lazy checks the first frame only
