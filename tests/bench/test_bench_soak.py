"""`jitnet bench soak`: a real clip looped live through one agent, one row per interval."""
import json
import subprocess
import sys

ROW_FIELDS = ("minute", "seconds", "rss_mb", "frames", "frames_read", "dropped", "fps", "latency_ms_p50",
              "latency_ms_p99", "p99_over_p50", "teacher_frames", "updates", "bytes_up", "bytes_down", "stride")


def test_soak_reports_rss_latency_and_drops_per_interval_of_one_live_run(tmp_path, artifacts):
    out = tmp_path / "soak.json"
    seconds = 24.0
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "soak", "--minutes", str(seconds / 60), "--interval-s", "4",
         "--warmup-minutes", str(4 / 60), "--teacher", "embedded:yolov5s-seg", "--classes", "person",
         "--artifacts", str(artifacts), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| minute | RSS MB |") and len(table) == len(rows) + 1  # header + one per row
    # A row closes once its interval is over (at the next frame): ~6 of them in 24 s, never fewer than 3.
    assert len(rows) >= 3
    for row in rows:
        assert set(ROW_FIELDS) <= set(row), set(ROW_FIELDS) - set(row)
        assert 50 < row["rss_mb"] < 16_000
        assert row["frames"] >= 1 and row["dropped"] >= 0
        # Every frame read was delivered, dropped, or is the one waiting in the live buffer.
        assert abs(row["frames_read"] - row["frames"] - row["dropped"]) <= 1
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert row["p99_over_p50"] >= 1.0
        assert row["bytes_up"] == 0 or row["teacher_frames"] >= 1
    minutes = [r["minute"] for r in rows]
    assert minutes == sorted(minutes) and len(set(minutes)) == len(minutes)
    assert minutes[-1] >= seconds / 60 - 1e-3
    # One stream for the whole run: the source is paced at the clip's rate, never faster.
    elapsed = sum(r["seconds"] for r in rows)
    read = sum(r["frames_read"] for r in rows)
    assert 0 < read <= report["clip_fps"] * elapsed * 1.1 + 2
    assert sum(r["teacher_frames"] for r in rows) >= 1 and sum(r["bytes_up"] for r in rows) > 0
    s = report["summary"]
    assert s["rows_after_warmup"] == len([m for m in minutes if m * 60 > 4 + 1e-6]) >= 1
    assert isinstance(s["rss_growth_percent"], float) and isinstance(s["rss_target_met"], bool)
    assert s["rss_target_met"] == (s["rss_growth_percent"] < 5.0)
    assert s["p99_over_p50_worst_row"] >= 1.0 and isinstance(s["latency_target_met"], bool)
    assert s["frames"] == sum(r["frames"] for r in rows)
    # The rows are differences of the agent's own counters: over the run they add up to its totals.
    agent = report["agent"]
    for key in ("frames", "teacher_frames", "updates", "bytes_up", "bytes_down"):
        assert sum(r[key] for r in rows) == agent[key], key
