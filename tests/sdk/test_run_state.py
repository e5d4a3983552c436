"""`jitnet run --state`: what a device that loses power keeps, and the errors a wrong --state gets.

Real processes: `jitnet run` against a real gRPC teacher on localhost, killed
with SIGKILL (a power cut) while it runs; its state directory is then
restored by a fresh trainer.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest

import sdk
from core.config import DistillConfig
from edge_agent.state import SnapshotStore
from edge_agent.trainer import load_trainer
from tests.conftest import REPO_ROOT
from tests.edge_agent.fake_teacher import start_fake_teacher
from tests.sdk.test_agent_metrics import wait_for


def _clip() -> str:
    from sdk.clips import first_available

    return str(first_available(("vtest", "bikes")))


def _jitnet_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "run", *args, "--no-progress"]


def _newest(state):
    """(number, steps) of the newest intact snapshot, or None."""
    found = SnapshotStore(state).latest()
    if found is None:
        return None
    return int(found[0].name.split("-")[1]), found[1]["steps"]


def _run_until(cmd, check, what: str, timeout_s: float = 180.0):
    """Start ``cmd``, wait for ``check()`` while it still runs, then SIGKILL it (the power goes)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def running_and(check=check):
            if proc.poll() is not None:
                pytest.fail(f"jitnet run ended before {what}: {proc.stdout.read()[-3000:]}")
            return check()

        return wait_for(running_and, what, timeout_s=timeout_s)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()


def test_power_lost_in_the_first_minute_keeps_the_first_lesson(artifacts, tmp_path):
    """Default interval (60 s): the snapshot after the first teacher update is there long before it."""
    teacher = start_fake_teacher()
    state = tmp_path / "state"
    try:
        number, steps = _run_until(
            _jitnet_run(_clip(), "--teacher", teacher.url, "--artifacts", str(artifacts), "--state", str(state),
                        "--scale", "0.5"),
            lambda: (n := _newest(state)) and n[1] > 0 and n, "a snapshot holding a training step")
    finally:
        teacher.stop()
    # The first-lesson save: the steps of one teacher frame, not a periodic or at-exit save (a run of this
    # clip takes ~100 steps and ends in ~20 s, where the old code's only snapshot was the one at exit).
    assert number == 1 and 0 < steps <= DistillConfig().max_updates
    trainer = load_trainer(artifacts, threads=1)
    assert trainer.restore(state) and trainer.steps >= steps


def test_save_every_s_sets_the_interval(artifacts, tmp_path):
    teacher = start_fake_teacher()
    state = tmp_path / "state"
    try:
        _run_until(
            _jitnet_run(_clip(), "--teacher", teacher.url, "--artifacts", str(artifacts), "--state", str(state),
                        "--scale", "0.5", "--save-every-s", "0.5"),
            lambda: (n := _newest(state)) and n[0] >= 3, "a third snapshot")
    finally:
        teacher.stop()
    assert load_trainer(artifacts, threads=1).restore(state)


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_save_every_s_must_be_positive(artifacts, value):
    proc = subprocess.run(_jitnet_run(_clip(), "--teacher", "grpc://127.0.0.1:1", "--artifacts", str(artifacts),
                                      "--save-every-s", value), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--save-every-s" in proc.stderr and "must be > 0" in proc.stderr
    with pytest.raises(ValueError, match="save_every_s must be > 0"):
        sdk.connect(None, artifacts=artifacts, save_every_s=float(value))


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "jitnet run: error:" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_state_pointing_at_a_regular_file_says_so_in_one_line(artifacts, tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{}")
    proc = subprocess.run(_jitnet_run(_clip(), "--teacher", "grpc://127.0.0.1:1", "--artifacts", str(artifacts),
                                      "--state", str(path)), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180)
    line = _one_line_error(proc)
    assert f"state directory {path} is a file, not a directory" in line and "Errno" not in line
    assert path.read_text() == "{}"


def test_artifacts_whose_manifest_does_not_fit_the_model_say_how_to_re_export(artifacts, tmp_path):
    edited = tmp_path / "art"
    shutil.copytree(artifacts, edited)
    raw = json.loads((edited / "manifest.json").read_text())
    raw["class_names"] = ["background", "person", "auto"]
    (edited / "manifest.json").write_text(json.dumps(raw))
    proc = subprocess.run(_jitnet_run(_clip(), "--teacher", "grpc://127.0.0.1:1", "--artifacts", str(edited)),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    line = _one_line_error(proc)
    assert "lists 3 classes" in line and "produces 2" in line
    assert f"jitnet export --classes person,auto --out {edited}" in line
