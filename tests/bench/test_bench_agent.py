"""`jitnet bench agent`: teacher on every frame vs the agent, on a real clip, in one run."""
import json
import subprocess
import sys


def test_bench_agent_reports_the_teacher_row_and_one_row_per_threshold(tmp_path, artifacts):
    out = tmp_path / "agent.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "agent", "--teacher", "yolov5s-seg", "--classes", "person",
         "--frames", "20", "--thresholds", "0.7,0.9", "--artifacts", str(artifacts), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    teacher, *agents = report["rows"]
    assert teacher["teacher_percent"] == 100.0 and teacher["speedup"] == 1.0 and teacher["frames"] == 20
    assert [r["threshold"] for r in agents] == [0.7, 0.9]
    for row in agents:
        # Frames 0 and 8 at least (stride 8 at most doubles once in 20 frames), never all of them.
        assert 10.0 <= row["teacher_percent"] < 100.0
        assert 0.0 <= row["mean_iou"] <= 1.0
        assert row["updates"] >= 1
        assert row["compute_ms"] > 0 and row["speedup"] > 0


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
