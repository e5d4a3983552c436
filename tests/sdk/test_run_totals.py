"""A run's summary is the agent's running totals: the same numbers as summing every frame's record, in memory
that does not grow with the run (weeks of frames must not grow the agent or slow each frame), with the flow
and fusion time charged in its cost."""
import json
import tracemalloc

import numpy as np
import pytest

import sdk
from edge_agent.agent import FrameResult
from edge_agent.counters import AgentCounters
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
    assert summary["student_iou_vs_teacher"] == pytest.approx(np.mean(before), abs=1e-4)
    output = [r["output_accuracy"] for r in labelled[1:]]  # the fused output before each answer: the headline
    assert summary["mean_iou_vs_teacher"] == pytest.approx(np.mean(output), abs=1e-4)
    after = [r["accuracy_after"] for r in rows if r["accuracy_after"] is not None]
    assert summary["mean_iou_after_training"] == pytest.approx(np.mean(after), abs=1e-4)
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows) == sum(s.request_bytes for s in teacher.teacher.seen)
    assert summary["bytes_down"] == sum(r["bytes_down"] for r in rows) > 0
    assert summary["bytes_up_per_teacher_frame"] == round(summary["bytes_up"] / len(labelled))
    assert summary["student_infer_ms"] == pytest.approx(np.median([r["timings"]["infer_ms"] for r in rows]), abs=0.1)
    assert summary["final_stride"] == rows[-1]["stride"]
    assert summary["kbps_up"] > 0 and summary["latency_ms_p50"] is not None
    # The default fuses the carried teacher answer: its time is in the summary, per frame and against inference.
    carry = [r["timings"]["flow_ms"] + r["timings"]["fusion_ms"] for r in rows]
    assert summary["flow_fusion_ms_per_frame"] == pytest.approx(np.median(carry), abs=0.01) and min(carry) > 0
    assert summary["flow_fusion_share_of_infer"] == pytest.approx(
        np.median(carry) / np.median([r["timings"]["infer_ms"] for r in rows]), abs=2e-3)


def _result(i: int) -> FrameResult:
    """A frame as the agent reports it: a teacher frame every 8th, flow and fusion time on every frame."""
    teacher = i % 8 == 0
    return FrameResult(index=i, labels=np.empty(0, np.uint8), teacher_labelled=teacher,
                       accuracy_before=0.5 if teacher else None, accuracy_after=0.7 if teacher else None,
                       updates=2 if teacher else 0, stride=8, bytes_up=1000 if teacher else 0,
                       bytes_down=100 if teacher else 0, carried_fraction=0.0 if teacher else 0.5,
                       timings={"teacher_ms": 20.0 if teacher else 0.0, "train_ms": 5.0 if teacher else 0.0,
                                "infer_ms": 3.0, "flow_ms": 0.5, "fusion_ms": 0.25, "latency_ms": 4.0})


def test_running_totals_do_not_grow_with_the_number_of_frames():
    counters, totals = AgentCounters(window=1024), RunTotals(window=1024)

    def add(i: int) -> None:
        r = _result(i)
        counters.add(r)
        totals.add(r)

    for i in range(5000):  # past the window: the medians' buffers are full
        add(i)
    tracemalloc.start()
    try:
        for i in range(5000, 10000):
            add(i)
        grown_a, _ = tracemalloc.get_traced_memory()
        for i in range(10000, 60000):
            add(i)
        grown_b, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 50,000 more frames cost no more memory than 5,000 did (a list of records would hold ~50 MB more).
    assert grown_b - grown_a < 64 * 1024, (grown_a, grown_b)
    summary = totals.summary(100.0, None, counters)
    assert summary["frames"] == 60000 and summary["teacher_frames"] == 7500 and summary["updates"] == 15000
    assert summary["bytes_up"] == 7_500_000 and summary["student_infer_ms"] == 3.0
    assert summary["latency_ms_p50"] == 4.0


def test_the_cost_charges_flow_and_fusion_on_every_frame():
    counters = AgentCounters()
    n = 800
    for i in range(n):
        counters.add(_result(i))
    s = counters.summary()
    assert s["flow_fusion_ms_per_frame"] == 0.75 and s["flow_fusion_share_of_infer"] == 0.25
    agent_ms = n * (3.0 + 0.5 + 0.25) + (n // 8) * 20.0 + (n // 8) * 5.0  # per frame, teacher frames, train steps
    assert s["cost_vs_teacher_every_frame"] == round(agent_ms / (n * 20.0), 4)
    assert s["speedup_vs_teacher_every_frame"] == round(n * 20.0 / agent_ms, 2)
    assert s["time_ms_total"]["flow_ms"] == n * 0.5 and s["time_ms_total"]["fusion_ms"] == n * 0.25
    assert s["carried_fraction_mean"] == round((n - n // 8) * 0.5 / n, 4)
