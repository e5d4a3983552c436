"""`jitnet teacher` and `jitnet bench teacher` as an operator runs them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np

from edge_agent.teacher_client import TeacherClient
from teacher_helpers import REPO_ROOT, StderrWatch, davis_rgb


def _jitnet(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs
    )


def test_jitnet_teacher_serves_logs_its_address_exposes_metrics_and_stops_on_sigterm() -> None:
    proc = _jitnet("teacher", "--backend", "yolov5s-seg", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0")
    log = StderrWatch(proc, r"listening on (grpc://\S+), metrics on (http://\S+/metrics)")
    try:
        match = log.wait(120)
        address = {"grpc": match.group(1).rstrip(";"), "metrics": match.group(2)}
        frame = np.ascontiguousarray(davis_rgb("breakdance", 0)[::2, ::2])
        with TeacherClient(address["grpc"], camera_id="cli", timeout_s=60) as client:
            labels = client.label(frame, ["person"], frame_index=3)
        assert labels.frame_index == 3 and (labels.label_map == 1).any()
        metrics = urllib.request.urlopen(address["metrics"], timeout=10).read().decode()
        assert 'jitnet_teacher_requests_total{code="OK"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.join(5)
    assert any("stopped" in line for line in log.lines)


def test_jitnet_teacher_maskrcnn_without_weights_refuses_and_says_where_to_put_them(tmp_path) -> None:
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"))
    proc = _jitnet("teacher", "--backend", "maskrcnn", "--port", "0", env=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "never serves random weights" in err and "--weights" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth") in err


def test_jitnet_bench_teacher_writes_rows_for_each_camera_count_with_batching_on_and_off(tmp_path) -> None:
    out = tmp_path / "bench.json"
    start = time.monotonic()
    proc = _jitnet("bench", "teacher", "--backend", "yolov5s-seg", "--cameras", "1,2", "--seconds", "0.5", "--rounds", "1", "--frames", "3", "--json", str(out))
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["cameras"], r["batching"]) for r in rows} == {(1, False), (2, False), (1, True), (2, True)}
    for row in rows:
        assert row["fps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["mean_batch"] >= 1
        assert row["errors"] == 0
    assert all(r["mean_batch"] == 1 for r in rows if not r["batching"])
    assert time.monotonic() - start < 300
