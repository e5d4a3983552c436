"""Per-frame JSON Lines logs: numpy values, NaN, interrupted writers."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sdk.results import JsonlLog, iter_jsonl, read_jsonl, to_jsonable


@dataclass
class Point:
    x: int
    y: float


def test_round_trip_converts_numpy_and_friends(tmp_path):
    path = tmp_path / "runs" / "log.jsonl"
    with JsonlLog(path) as log:
        log.write({"frame": np.int64(3), "miou": np.float32(0.5), "teacher": np.bool_(True),
                   "ious": np.array([0.25, np.nan]), "size": (640, 272), "path": Path("/x"), "p": Point(1, 2.5)})
        log.write({"frame": 4, "miou": float("inf")})
    records = read_jsonl(path)
    assert records == [
        {"frame": 3, "miou": 0.5, "teacher": True, "ious": [0.25, None], "size": [640, 272],
         "path": "/x", "p": {"x": 1, "y": 2.5}},
        {"frame": 4, "miou": None},
    ]
    # strict JSON on every line (no NaN tokens)
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))


def test_each_line_is_on_disk_before_close(tmp_path):
    path = tmp_path / "live.jsonl"
    log = JsonlLog(path)
    log.write({"frame": 0})
    assert read_jsonl(path) == [{"frame": 0}]
    log.close()
    with JsonlLog(path, append=True) as log2:
        log2.write({"frame": 1})
    assert [r["frame"] for r in read_jsonl(path)] == [0, 1]


def test_cut_off_last_line_is_skipped_but_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"frame": 0}\n{"frame": 1}\n{"fra')
    assert read_jsonl(path) == [{"frame": 0}, {"frame": 1}]
    path.write_text('{"frame": 0}\nnot json\n{"frame": 2}\n')
    with pytest.raises(ValueError, match=r"cut.jsonl:2"):
        list(iter_jsonl(path))


def test_unloggable_values_and_closed_log_raise(tmp_path):
    with pytest.raises(TypeError, match="object"):
        to_jsonable({"x": object()})
    log = JsonlLog(tmp_path / "a.jsonl")
    with pytest.raises(TypeError, match="mapping"):
        log.write([1, 2])
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.write({"a": 1})
