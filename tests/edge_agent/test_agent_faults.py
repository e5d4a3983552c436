"""Live mode, a slow teacher, a dead teacher, a killed run: segmentation never stops, nothing is lost."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sdk
from edge_agent.agent import DistillationAgent
from core.config import DistillConfig
from edge_agent.state import SnapshotStore
from edge_agent.teacher_client import TeacherClient
from edge_agent.trainer import load_trainer
from teacher_server.labeler import Labeler
from teacher_server.server import start_server
from tests.edge_agent.agent_helpers import clip_frames, free_port
from tests.conftest import REPO_ROOT
from tests.teacher_server.teacher_helpers import SlowBackend, yolo_backend


def test_live_mode_keeps_segmenting_while_a_slow_teacher_works(artifacts):
    handle = start_server(Labeler(SlowBackend(yolo_backend(), delay_s=3.0)), port=0, max_batch=1, warmup=False)
    try:
        trainer = load_trainer(artifacts)
        frames = clip_frames(60)
        with TeacherClient(handle.url, camera_id="live") as teacher:
            agent = DistillationAgent(trainer, teacher, DistillConfig(), live=True)
            results, start, i = [], time.monotonic(), 0
            # Until the teacher's answer has arrived and been learnt from (or 90 s).
            while time.monotonic() - start < 90:
                results.append(agent.process(i, frames[i % len(frames)]))
                i += 1
                if any(r.teacher_labelled for r in results) and agent.controller.pending is None and i > 20:
                    break
    finally:
        handle.stop(grace=0.5)
    waiting = [r for r in results if r.teacher_state == "waiting"]
    # The teacher needed >3 s for frame 0; meanwhile the student answered frame after frame.
    assert len(waiting) >= 5
    assert max(r.timings["frame_ms"] for r in waiting) < 1500
    assert all(r.labels.shape == frames[0].shape[:2] for r in results)
    labelled = [r for r in results if r.teacher_labelled]
    assert labelled, "the slow teacher never answered within 90 s"
    assert labelled[0].teacher_index == 0 and labelled[0].index > 0  # applied when it arrived


def test_teacher_killed_and_restarted_mid_stream(artifacts, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "teacher", "--backend", "yolov5s-seg", "--port", str(port), "--host", "127.0.0.1"]

    def start_teacher():
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        with TeacherClient(f"grpc://127.0.0.1:{port}") as probe:
            while time.monotonic() < deadline:
                try:
                    probe.info(deadline_s=1.0)
                    return proc
                except Exception:
                    time.sleep(0.5)
        proc.kill()
        pytest.fail("teacher did not start")

    teacher_proc = start_teacher()
    frames = clip_frames(200)
    trainer = load_trainer(artifacts)
    results = []
    try:
        with TeacherClient(f"grpc://127.0.0.1:{port}", timeout_s=5.0, max_attempts=2) as teacher:
            agent = DistillationAgent(trainer, teacher, DistillConfig(min_stride=8, max_stride=8))
            for i in range(0, 30):
                results.append(agent.process(i, frames[i]))
            teacher_proc.kill()
            teacher_proc.wait()
            for i in range(30, 60):
                results.append(agent.process(i, frames[i]))
            dead_states = {r.teacher_state for r in results[30:]}
            teacher_proc = start_teacher()
            agent.health.retry_at = 0.0  # do not wait out the back-off in a test
            for i in range(60, 100):
                results.append(agent.process(i, frames[i]))
    finally:
        teacher_proc.kill()
        teacher_proc.wait()
    assert [r.index for r in results] == list(range(100))  # every frame segmented
    assert all(r.labels.shape == frames[0].shape[:2] for r in results)
    assert "unavailable" in dead_states
    assert not any(r.teacher_labelled for r in results[33:60])
    assert any(r.teacher_labelled for r in results[60:]), "training did not resume after the restart"
    assert results[-1].teacher_state == "ok"


def test_sigterm_mid_run_leaves_a_state_that_restores(artifacts, tmp_path):
    state, log = tmp_path / "state", tmp_path / "frames.jsonl"
    clip = str(__import__("sdk.clips", fromlist=["first_available"]).first_available(("vtest", "bikes")))
    cmd = [sys.executable, "-m", "cli.main", "run", clip, "--teacher", "embedded:yolov5s-seg", "--artifacts",
           str(artifacts), "--state", str(state), "--log", str(log), "--scale", "0.5", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and sum(1 for _ in open(log)) >= 20:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]  # SIGTERM is a requested stop, not an error
    assert "terminated (SIGTERM)" in out
    found = SnapshotStore(state).latest()
    assert found is not None, out[-3000:]
    steps = found[1]["steps"]
    assert steps > 0
    restored = load_trainer(artifacts)
    assert restored.restore(state) and restored.steps == steps
    frames_logged = [json.loads(line) for line in open(log)]
    assert len(frames_logged) >= 20


def test_connect_to_a_dead_address(artifacts):
    dead = f"grpc://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="does not answer.*strict=False"):
        sdk.connect(dead, artifacts=artifacts, teacher_timeout_s=1.0)
    with sdk.connect(dead, artifacts=artifacts, strict=False, teacher_timeout_s=1.0) as session:
        results = list(session.segment(list(clip_frames(12))))
    assert len(results) == 12
    assert all(r.labels.shape == clip_frames(12)[0].shape[:2] for r in results)
    assert results[-1].teacher_state == "unavailable" and "127.0.0.1" in results[-1].teacher_error
