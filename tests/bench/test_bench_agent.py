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
        # Speedup = teacher-every-frame compute / agent compute, both measured in this run (on 20
        # frames with the cheap yolov5s-seg it is near 1: the first teacher frames' updates dominate).
        assert row["compute_ms"] > 0 and abs(row["speedup"] - teacher["compute_ms"] / row["compute_ms"]) <= 0.011
