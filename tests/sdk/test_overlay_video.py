"""Overlays on real frames and the videos written from them."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from conftest import load_davis_frame
from sdk.clips import find_clip
from sdk.overlay import PALETTE, OverlayWriter, color_lut, colorize, overlay, side_by_side
from sdk.streams import read_frames


@pytest.fixture(scope="module")
def swan(davis_root):
    image, mask = load_davis_frame("blackswan", 0)
    return image, mask.astype(np.uint8)  # label 1 = the swan


def test_overlay_blends_class_colour_and_leaves_background_untouched(swan):
    image, labels = swan
    out = overlay(image, labels, alpha=0.4)
    bg = labels == 0
    assert np.array_equal(out[bg], image[bg])
    want = np.rint(0.6 * image[~bg] + 0.4 * PALETTE[1].astype(np.float32)).astype(np.uint8)
    assert np.abs(out[~bg].astype(int) - want).max() <= 1
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_alpha_extremes(swan):
    image, labels = swan
    assert np.array_equal(overlay(image, labels, alpha=0.0), image)
    full = overlay(image, labels, alpha=1.0)
    assert (full[labels == 1] == PALETTE[1]).all()
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, labels, alpha=1.5)


def test_classes_get_distinct_fixed_colours_and_labels_past_the_palette_wrap():
    labels = np.arange(0, 25, dtype=np.uint8).reshape(5, 5)
    rgb = colorize(labels)
    assert (rgb[0, 0] == 0).all()
    first20 = {tuple(c) for c in rgb.reshape(-1, 3)[1:21]}
    assert len(first20) == 20
    assert (color_lut()[21] == color_lut()[1]).all()


def test_smaller_label_map_is_scaled_to_the_frame(swan):
    image, labels = swan
    small = cv2.resize(labels, (labels.shape[1] // 2, labels.shape[0] // 2), interpolation=cv2.INTER_NEAREST)
    out = overlay(image, small, alpha=1.0)
    changed = (out != image).any(axis=2)
    assert abs(changed.mean() - labels.mean()) < 0.01


def test_legend_is_drawn_top_left_from_class_names(swan):
    image, labels = swan
    plain = overlay(image, labels)
    with_legend = overlay(image, labels, class_names=["bird", "person"])
    diff = (plain != with_legend).any(axis=2)
    ys, xs = np.nonzero(diff)
    assert ys.max() < image.shape[0] // 4 and xs.max() < image.shape[1] // 3
    # the second class's swatch colour is present even though no pixel has label 2
    assert (with_legend[: ys.max() + 1, : xs.max() + 1] == PALETTE[2]).all(axis=2).any()
    with pytest.raises(ValueError, match="class_names"):
        overlay(image, labels, legend=True)


def test_bad_inputs_are_rejected(swan):
    image, labels = swan
    with pytest.raises(ValueError, match="RGB uint8"):
        overlay(image.astype(np.float32), labels)
    with pytest.raises(ValueError, match="integer"):
        overlay(image, labels.astype(np.float32))
    with pytest.raises(ValueError, match="0..255"):
        overlay(image, labels.astype(np.int32) * 300)


def test_side_by_side_puts_titled_panels_in_a_row(swan):
    image, labels = swan
    small = cv2.resize(image, (427, 240))
    row = side_by_side(overlay(image, labels), small, titles=("teacher", "student"), gap=8)
    assert row.shape[1] == 854 + 8 + 854  # second panel scaled to the first's height
    assert row.shape[0] > 480  # title bar on top
    assert (row[:, 854:862] == 0).all()
    with pytest.raises(ValueError, match="titles"):
        side_by_side(image, image, titles=("one",))


def test_writer_writes_a_readable_mp4_of_real_frames(tmp_path):
    frames = read_frames(find_clip("bikes"), max_frames=12)
    with OverlayWriter(tmp_path / "out" / "bikes.mp4", fps=25) as writer:
        assert writer.size is None  # lazily opened
        for f in frames:
            writer.write(f)
    assert writer.path.suffix == ".mp4" and writer.frames_written == 12
    cap = cv2.VideoCapture(str(writer.path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (640, 272)
    ok, bgr = cap.read()
    cap.release()
    assert ok
    # lossy, but the same picture in the same channel order
    assert np.abs(bgr[:, :, ::-1].astype(int) - frames[0]).mean() < 12


def test_writer_falls_back_to_mjpg_avi_with_a_warning(tmp_path, caplog, swan):
    image, _ = swan
    with caplog.at_level(logging.WARNING, logger="sdk.overlay"):
        with OverlayWriter(tmp_path / "x.mp4", fps=10, fourcc="XXXX") as writer:
            writer.write(image)
            writer.write(image)
    assert writer.path == tmp_path / "x.avi" and writer.fourcc == "MJPG"
    assert "instead" in caplog.text
    cap = cv2.VideoCapture(str(writer.path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    cap.release()


def test_writer_pads_odd_sizes_and_refuses_a_size_change(tmp_path, swan):
    image, _ = swan
    odd = np.ascontiguousarray(image[:101, :151])
    with OverlayWriter(tmp_path / "odd.mp4", fps=10) as writer:
        writer.write(odd)
        assert writer.size == (152, 102)
        with pytest.raises(ValueError, match="differs"):
            writer.write(image)
    cap = cv2.VideoCapture(str(writer.path))
    ok, bgr = cap.read()
    cap.release()
    assert ok and bgr.shape == (102, 152, 3)
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(odd)


def test_side_by_side_titles_with_different_glyphs_line_up():
    """'teacher' has no descender, 'Student (jitnet 0.8)' has: the bars must still match."""
    from sdk.overlay import side_by_side

    a = np.zeros((288, 384, 3), np.uint8)
    out = side_by_side(a, a.copy(), titles=["teacher", "Student (jitnet 0.8) gy"])
    assert out.shape[1] == 384 * 2 + 8 and out.shape[0] > 288
