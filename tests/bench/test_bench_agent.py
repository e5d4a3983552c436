"""`jitnet bench agent`: teacher on every frame vs the agent, on a real clip, in one run."""
import json
import subprocess
import sys


def _bench_agent(tmp_path, artifacts, thresholds: str) -> tuple[dict, str]:
    """`jitnet bench agent` on 20 frames of the demo clip: its JSON report and what it printed."""
    out = tmp_path / "agent.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "agent", "--teacher", "yolov5s-seg", "--classes", "person",
         "--frames", "20", "--thresholds", thresholds, "--artifacts", str(artifacts), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_bench_agent_reports_the_teacher_row_and_one_row_per_threshold(tmp_path, artifacts):
    report, _ = _bench_agent(tmp_path, artifacts, "0.7,0.9")
    teacher, *agents = report["rows"]
    assert teacher["teacher_percent"] == 100.0 and teacher["speedup"] == 1.0 and teacher["frames"] == 20
    assert [r["threshold"] for r in agents] == [0.7, 0.9]
    for row in agents:
        # Frames 0 and 8 at least (stride 8 at most doubles once in 20 frames), never all of them.
        assert 10.0 <= row["teacher_percent"] < 100.0
        assert 0.0 <= row["mean_iou"] <= 1.0
        assert row["updates"] >= 1
        assert row["compute_ms"] > 0 and row["speedup"] > 0
        assert row["flow_fusion_ms_total"] > 0  # the default fuses the carried answer: its time is charged


def _request_bytes(frames, indices, max_side=512, quality=90):
    """What TeacherClient would send for these frames, serialized (computed here, not by the bench)."""
    from edge_agent.teacher_client import encode_frame, shrink_to_max_side
    from core.config import DistillConfig
    from protos import teacher_pb2

    threshold = DistillConfig().score_threshold  # the agent asks at its configured score threshold
    extra = {} if threshold is None else {"score_threshold": float(threshold)}
    return sum(teacher_pb2.LabelRequest(camera_id="cam0", frame_index=i, groups=["person"], **extra,
                                        **encode_frame(shrink_to_max_side(frames[i], max_side), "jpeg", quality)
                                        ).ByteSize() for i in indices)


def test_bench_agent_bandwidth_columns_are_the_bytes_of_its_teacher_frames_over_the_video(tmp_path, artifacts):
    from sdk.clips import first_available
    from sdk.streams import read_frames

    report, printed = _bench_agent(tmp_path, artifacts, "0.8")
    assert "kbps up" in printed  # the Markdown table is printed
    frames = read_frames(str(first_available(("vtest", "bikes"))), max_frames=20, resize=0.5)
    video_s = 20 / report["clip_fps"]
    assert report["video_s"] == round(video_s, 3)
    teacher, agent = report["rows"]
    # The teacher row sends every frame; the agent only its teacher frames, so far fewer bytes.
    assert teacher["bytes_up"] == _request_bytes(frames, range(20))
    asked = agent["teacher_frame_indices"]
    assert len(asked) == round(agent["teacher_percent"] * 20 / 100) >= 1 and asked[0] == 0
    assert agent["bytes_up"] == _request_bytes(frames, asked)
    assert 0 < agent["bytes_up"] < teacher["bytes_up"] and 0 < agent["bytes_down"] < teacher["bytes_down"]
    # A label map PNG + instances: more than nothing, less than the JPEG frame it answers.
    assert 100 * len(asked) < agent["bytes_down"] < agent["bytes_up"]
    for row in (teacher, agent):
        assert row["kbps_up"] == round(8 * row["bytes_up"] / 1000 / video_s, 2)
        assert row["kbps_down"] == round(8 * row["bytes_down"] / 1000 / video_s, 2)


def test_student_only_loop_runs_this_tree_and_a_baseline_commit(tmp_path, artifacts):
    """--student-only times the agent loop on this tree and on a commit from a git worktree, side by side."""
    import subprocess as sp
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if sp.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        import pytest
        pytest.skip("needs a git checkout (the baseline runs from a worktree)")
    out = tmp_path / "loop.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "agent", "--student-only", "--baseline-ref", "HEAD",
         "--teacher", "yolov5s-seg", "--classes", "person", "--frames", "12", "--repeats", "1",
         "--artifacts", str(artifacts), "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    this, base = report["rows"]
    assert this["code"] == "this tree" and base["code"] == "baseline HEAD"
    # The same decisions on the same labels: both trees asked the teacher for the same frames.
    assert this["teacher_frames"] == base["teacher_frames"] >= 1
    assert this["fps_median"] > 0 and base["fps_median"] > 0
    # One forward per frame plus one per update, never more.
    assert this["forwards_per_frame"] <= 1 + this["updates"] / 12 + 1e-9
    assert "speedup_vs_baseline" in report
