"""A run's summary is kept in running totals: the same numbers as summing every frame's record, in memory
that does not grow with the run (weeks of frames must not grow the agent or slow each frame)."""
import json
import tracemalloc

import numpy as np
import pytest

import sdk
from sdk.runner import RunTotals, run_stream
from tests.edge_agent.agent_helpers import clip_frames
from tests.edge_agent.fake_teacher import start_fake_teacher


def test_the_summary_of_a_real_run_equals_the_sums_over_its_logged_frames(artifacts, tmp_path):
    teacher = start_fake_teacher()
    log = tmp_path / "frames.jsonl"
    try:
        with sdk.connect(teacher.url, artifacts=artifacts) as session:
            summary = run_stream(session, list(clip_frames(60, 0.25)), log_path=log, progress=False)
    finally:
        teacher.stop()
    rows = [json.loads(line) for line in open(log)]
    labelled = [r for r in rows if r["teacher_labelled"]]
    assert len(rows) == summary["frames"] == 60 and len(labelled) >= 2
    assert summary["teacher_frames"] == len(labelled)
    assert summary["updates"] == sum(r["updates"] for r in rows) > 0
    before = [r["accuracy_before"] for r in labelled[1:]]  # the first teacher frame is excluded
    assert summary["mean_iou_vs_teacher"] == pytest.approx(np.mean(before), abs=1e-4)
    after = [r["accuracy_after"] for r in rows if r["accuracy_after"] is not None]
    assert summary["mean_iou_after_training"] == pytest.approx(np.mean(after), abs=1e-4)
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows) == sum(s.request_bytes for s in teacher.teacher.seen)
    assert summary["bytes_down"] == sum(r["bytes_down"] for r in rows) > 0
    assert summary["bytes_up_per_teacher_frame"] == round(summary["bytes_up"] / len(labelled))
    assert summary["student_infer_ms"] == pytest.approx(np.median([r["timings"]["infer_ms"] for r in rows]), abs=0.1)
    assert summary["final_stride"] == rows[-1]["stride"]
    assert summary["kbps_up"] > 0 and summary["latency_ms_p50"] is not None


def _record(i: int) -> dict:
    teacher = i % 8 == 0
    return {"index": i, "teacher_labelled": teacher, "accuracy_before": 0.5 if teacher else None,
            "accuracy_after": 0.7 if teacher else None, "updates": 2 if teacher else 0, "stride": 8,
            "bytes_up": 1000 if teacher else 0, "bytes_down": 100 if teacher else 0, "reconnects": 0,
            "timings": {"teacher_ms": 20.0 if teacher else 0.0, "train_ms": 5.0 if teacher else 0.0,
                        "infer_ms": 3.0, "latency_ms": 4.0}}


def test_running_totals_do_not_grow_with_the_number_of_frames():
    totals = RunTotals(window=1024)
    for i in range(5000):  # past the window: the medians' buffers are full
        totals.add(_record(i))
    tracemalloc.start()
    try:
        for i in range(5000, 10000):
            totals.add(_record(i))
        grown_a, _ = tracemalloc.get_traced_memory()
        for i in range(10000, 60000):
            totals.add(_record(i))
        grown_b, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 50,000 more frames cost no more memory than 5,000 did (a list of records would hold ~50 MB more).
    assert grown_b - grown_a < 64 * 1024, (grown_a, grown_b)
    summary = totals.summary(100.0, session=None)
    assert summary["frames"] == 60000 and summary["teacher_frames"] == 7500 and summary["updates"] == 15000
    assert summary["bytes_up"] == 7_500_000 and summary["student_infer_ms"] == 3.0
