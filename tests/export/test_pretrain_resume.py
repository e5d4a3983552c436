"""A `jitnet pretrain` killed mid-run (SIGKILL: no clean-up, no card) resumes from its last checkpoint
and ends with the weights an uninterrupted run reaches; the card is written once, by the run that finishes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from export.jitnet import load_student
from export.pretrain.card import card_of
from export.pretrain.checkpoint import resume_path
from tests.conftest import REPO_ROOT

DATA = Path(os.environ.get("JITNET_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
EPOCHS = 4


def _command(camvid: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cli.main", "pretrain", "--classes", "auto", "--size", "64x96", "--epochs",
            str(EPOCHS), "--batch", "2", "--threads", "1", "--no-progress",
            "--source", f"camvid:{camvid},split=train,max=4", "--out", str(out)]


def _kill_at_first_checkpoint(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` and SIGKILL it the moment it logs its first checkpoint; (exit status, its log)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = threading.Timer(600, proc.kill)  # a hung run fails the test instead of hanging it
    deadline.start()
    log = []
    try:
        for line in proc.stderr:  # blocks on the run's own log: the checkpoint line is the event
            log.append(line)
            if "checkpoint after epoch" in line:
                proc.send_signal(signal.SIGKILL)
                break
        return proc.wait(timeout=600), "".join(log)
    finally:
        deadline.cancel()
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_killed_pretrain_resumes_from_its_last_checkpoint(tmp_path):
    camvid = DATA / "camvid"
    if not camvid.is_dir():
        pytest.skip(f"{camvid} not found: this test trains on the workspace's ../shared/data/camvid")
    whole, killed = tmp_path / "whole.pt", tmp_path / "killed.pt"
    done = subprocess.run(_command(camvid, whole), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not resume_path(whole).exists() and card_of(whole).is_file()

    status, log = _kill_at_first_checkpoint(_command(camvid, killed))
    assert status == -signal.SIGKILL, log
    assert not card_of(killed).exists()  # a card is written once, by a finished run
    epoch = torch.load(resume_path(killed), weights_only=True)["history"][-1]["epoch"]
    assert 1 <= epoch < EPOCHS
    load_student(killed)  # the student file is whole, whatever the kill interrupted

    resumed = subprocess.run(_command(camvid, killed), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} after epoch {epoch}" in resumed.stderr
    card = json.loads(card_of(killed).read_text())
    assert card["resumed"] is True and [r["epoch"] for r in card["history"]] == list(range(EPOCHS + 1))
    assert not resume_path(killed).exists()
    a = torch.load(whole, weights_only=True)
    b = torch.load(killed, weights_only=True)
    for key, value in a["body"].items():
        torch.testing.assert_close(b["body"][key], value, rtol=1e-5, atol=1e-6)
