"""Markdown tables in the paper's layout and the Figure-4 timeline PNG."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from evaluation.report import (
    davis_table,
    lvs_table,
    markdown_table,
    moving_average,
    plot_timeline,
    updates_per_interval,
)


def test_markdown_table_formats_cells():
    rows = [{"name": "a|b", "x": 0.12345, "n": 3}, {"name": "c", "x": float("nan")}]
    assert markdown_table(rows, ["name", ("x", "X value"), "n"], digits=2) == (
        "| name | X value | n |\n"
        "|---|---:|---:|\n"
        "| a\\|b | 0.12 | 3 |\n"
        "| c | - | - |\n"
    )


def test_lvs_table_in_paper_layout():
    runs = [
        {"method": "Offline oracle", "iou_per_group": {"person": 0.781}, "mean_iou": 0.781},
        {
            "method": "JITNet 0.8",
            "iou_per_group": {"person": 0.702, "car": 0.651},
            "mean_iou": 0.6766,
            "teacher_fraction": 0.125,
            "updates": 412,
            "speedup_ms": 7.04,
            "speedup_flops": 12.96,
        },
    ]
    table = lvs_table(runs, title="LVS: kite-surf")
    lines = table.splitlines()
    assert lines[0] == "### LVS: kite-surf"
    assert lines[2] == "| Method | person IoU | car IoU | Mean IoU | Teacher frames | Updates | Speedup (time) | Speedup (FLOPs) |"
    assert lines[4] == "| Offline oracle | 0.781 | - | 0.781 | - | - | - | - |"
    assert lines[5] == "| JITNet 0.8 | 0.702 | 0.651 | 0.677 | 12.5% | 412 | 7.0x | 13.0x |"


def test_davis_table_has_mean_row_and_paper_reference():
    res = {
        "blackswan": {"J": {"mean": 0.9, "recall": 1.0, "decay": 0.02}, "F": {"mean": 0.8, "recall": 0.9, "decay": 0.04}},
        "dog": {"J": {"mean": 0.7, "recall": 0.8, "decay": 0.10}, "F": {"mean": 0.6, "recall": 0.5, "decay": 0.00}},
    }
    table = davis_table(res, "A")
    assert "configuration A" in table.splitlines()[0]
    assert "| Sequence | J mean | J recall | J decay | F mean | F recall | F decay |" in table
    assert "| dog | 0.700 | 0.800 | 0.100 | 0.600 | 0.500 | 0.000 |" in table
    assert "| **Mean** | 0.800 | 0.900 | 0.060 | 0.700 | 0.700 | 0.020 |" in table
    assert "| Paper (JITNet, config A, DAVIS 2016 val) | 0.642 | - | - | 0.680 | - | - |" in table
    assert "| 0.811 | - | - | 0.831 |" in davis_table(res, "C")
    assert "Paper" not in davis_table(res)
    with pytest.raises(ValueError, match="config"):
        davis_table(res, "B")


def test_timeline_png_is_a_real_image(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    iou = {
        "JITNet 0.8": np.clip(0.75 + 0.1 * rng.standard_normal(n), 0, 1).tolist(),
        "Flow (slow)": np.clip(0.6 + 0.1 * rng.standard_normal(n), 0, 1).tolist(),
        "No adaptation": [float("nan")] * 10 + [0.3] * (n - 10),
    }
    updates = updates_per_interval([0] * 8 + [8] * 5 + [150] * 3, n, 30)
    assert updates == [13, 0, 0, 0, 0, 3, 0, 0, 0, 0]
    path = plot_timeline(iou, updates, tmp_path / "plots" / "timeline.png", smooth=15, fps=30, title="kite-surf")
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (550, 1000, 3)
    assert img.std() > 10  # lines and bars were drawn, not a blank canvas
    multi = plot_timeline(iou, {"JITNet 0.7": updates, "JITNet 0.9": [u * 2 for u in updates]}, tmp_path / "m.png")
    assert cv2.imread(str(multi)) is not None


def test_moving_average_skips_missing_frames():
    out = moving_average([1.0, float("nan"), 0.0, 1.0], 3)
    assert out.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.5])
    assert moving_average([0.2, 0.4], 1).tolist() == [0.2, 0.4]


def test_updates_outside_the_video_are_an_error():
    with pytest.raises(ValueError, match="outside"):
        updates_per_interval([100], 50, 10)
