"""One real run, three reports that read one set of counters: the run summary, the agent's /metrics and the
per-frame JSONL log agree on frames, teacher frames, updates, failures, bytes (what the teacher server received,
resent requests included), scene cuts, carried pixels and the time of inference, training, flow and fusion."""
import numpy as np
import pytest

import sdk
from core.config import DistillConfig
from sdk.results import read_jsonl
from sdk.runner import run_stream
from tests.edge_agent.agent_helpers import clip_frames
from tests.edge_agent.fake_teacher import FakeTeacher, start_fake_teacher
from tests.sdk.test_agent_metrics import scrape


def test_summary_metrics_and_jsonl_count_the_same_run(artifacts, tmp_path):
    # Every second call is refused as busy, so the client resends: bytes must count every attempt, everywhere.
    teacher = start_fake_teacher(FakeTeacher(refuse_every=2))
    log = tmp_path / "frames.jsonl"
    try:
        with sdk.connect(teacher.url, artifacts=artifacts, config=DistillConfig(fusion="flow"), metrics_port=0,
                         metrics_host="127.0.0.1") as session:
            summary = run_stream(session, list(clip_frames(48, 0.25)), log_path=log, progress=False)
            m = scrape(session.metrics.url)
    finally:
        teacher.stop()
    rows = read_jsonl(log)
    seen = teacher.teacher.seen
    labelled = [r for r in rows if r["teacher_labelled"]]
    assert len(labelled) >= 2 and len(seen) > len(labelled)  # some requests went twice

    def same(key: str, metric: str, logged) -> None:
        assert summary[key] == m[f"jitnet_agent_{metric}"] == logged, (key, summary[key], m[f"jitnet_agent_{metric}"], logged)

    same("frames", "frames_total", len(rows))
    same("teacher_frames", "teacher_frames_total", len(labelled))
    same("updates", "updates_total", sum(r["updates"] for r in rows))
    same("teacher_failures", "teacher_failures_total", 0)  # busy, resent, answered: not a failure
    same("bytes_up", "bytes_up_total", sum(r["bytes_up"] for r in rows))
    same("bytes_down", "bytes_down_total", sum(r["bytes_down"] for r in rows))
    same("scene_cuts", "scene_cuts_total", sum(r["scene_cut"] for r in rows))
    # What the network carried, measured by the server: every request it received, every answer it sent.
    assert summary["bytes_up"] == sum(s.request_bytes for s in seen)
    assert summary["bytes_down"] == sum(s.response_bytes for s in seen) > 0

    # Time per timing key: the log rounds each frame to 1 us, the summary its totals to 0.1 ms.
    for key, metric in (("infer_ms", "inference"), ("train_ms", "train"), ("flow_ms", "flow"), ("fusion_ms", "fusion")):
        logged = sum(r["timings"][key] for r in rows)
        assert logged > 0, key
        assert summary["time_ms_total"][key] == pytest.approx(logged, abs=0.1), key
        assert m[f"jitnet_agent_{metric}_seconds_total"] * 1e3 == pytest.approx(logged, abs=0.1), key
    carry = np.median([r["timings"]["flow_ms"] + r["timings"]["fusion_ms"] for r in rows])
    assert summary["flow_fusion_ms_per_frame"] == pytest.approx(carry, abs=0.01)
    assert m["jitnet_agent_flow_fusion_ms"] == pytest.approx(summary["flow_fusion_ms_per_frame"], abs=0.01)
    assert m["jitnet_agent_flow_fusion_share_of_inference"] == pytest.approx(summary["flow_fusion_share_of_infer"],
                                                                            abs=1e-3)
    carried = np.mean([r["carried_fraction"] for r in rows])
    assert summary["carried_fraction_mean"] == pytest.approx(carried, abs=1e-4) and carried > 0
    assert m["jitnet_agent_carried_fraction_mean"] == pytest.approx(carried, abs=1e-4)
    assert summary["final_stride"] == m["jitnet_agent_stride"] == rows[-1]["stride"]
