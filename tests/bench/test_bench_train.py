"""`jitnet bench train` runs end to end at a tiny size and writes the documented JSON."""
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "width", "height", "width_px", "params", "gflops_infer", "gflops_train",
    "ort_infer_ms", "torch_infer_ms", "ort_train_ms", "torch_train_ms", "infer_speedup", "train_speedup",
}


def test_bench_train_writes_one_row_per_width_and_size(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "train", "--json", str(out), "--sizes", "64x96,70x64",
         "--widths", "0.25", "--repeats", "1", "--warmup", "1", "--threads", "1", "--settle-ms", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"rows", "machine"}
    rows = result["rows"]
    assert [(r["height"], r["width_px"]) for r in rows] == [(64, 96), (96, 64)]  # 70 is padded up to the stride
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["width"] == 0.25 and row["params"] > 100_000
        assert all(row[k] > 0 for k in ROW_KEYS - {"width", "height", "width_px", "params"})
        assert row["gflops_train"] > 2 * row["gflops_infer"]  # backward costs about twice the forward
    machine = result["machine"]
    assert machine["threads"] == 1 and machine["cpu_count"] >= 1 and "torch" in machine
    assert "| width |" in proc.stdout  # the readable table


def test_bench_train_rejects_a_malformed_size():
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "train", "--sizes", "384by640"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "384x640" in proc.stderr
