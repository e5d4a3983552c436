"""The shipped pre-trained student: present, small, what its card says, and the default start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.jitnet import load_student_start
from export.pretrained import SHIPPED, InitError, card_of, resolve_init, sha256_of, shipped_checkpoint

CHECKPOINT = SHIPPED[0.5]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_the_shipped_student_matches_its_card():
    assert CHECKPOINT.is_file(), f"{CHECKPOINT} is missing: rebuild it with `make pretrained`"
    card = json.loads(card_of(CHECKPOINT).read_text())
    assert CHECKPOINT.stat().st_size <= 8 * 1024 * 1024 and card["bytes"] == CHECKPOINT.stat().st_size
    assert card["sha256"] == sha256_of(CHECKPOINT)
    assert card["recipe"]["command"].startswith("jitnet pretrain") and card["recipe"]["seed"] == 0
    assert all(source.get("licence") for source in card["data"])
    assert {"person", "auto", "bike", "animal"} <= set(card["model"]["classes"])
    model, start = load_student_start(CHECKPOINT, classes=["person", "auto"])
    assert start.trained == ("person", "auto") and model.spec.width == 0.5
    assert resolve_init("default") == CHECKPOINT == shipped_checkpoint(0.5)
    assert resolve_init("none") is None


def test_a_tampered_shipped_student_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / CHECKPOINT.name
    copy.write_bytes(CHECKPOINT.read_bytes()[:-10] + b"0123456789")
    card_of(copy).write_text(card_of(CHECKPOINT).read_text())
    monkeypatch.setitem(SHIPPED, 0.5, copy)
    with pytest.raises(InitError, match="sha256"):
        resolve_init("default")


def test_connect_starts_from_the_shipped_student(tmp_path, monkeypatch):
    import sdk

    monkeypatch.setenv("JITNET_CACHE", str(tmp_path))
    with sdk.connect(None, classes=("person",)) as session:
        assert "shipped pre-trained student" in session.start
    exported = sorted(p.name for p in (tmp_path / "artifacts").iterdir())
    assert exported == [f"person-w0.5-init-{sha256_of(CHECKPOINT)[:12]}"]
    with sdk.connect(None, classes=("person",), init="none") as session:
        assert "random" in session.start


def test_a_killed_pretrain_resumes_from_its_last_epoch(tmp_path):
    camvid = DATA / "camvid"
    if not camvid.is_dir():
        pytest.skip(f"{camvid} not found: this test trains on the workspace's ../shared/data/camvid")
    from export.pretrain import EXIT_AFTER_EPOCH_ENV

    def pretrain(out: Path, env: dict) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "cli.main", "pretrain", "--classes", "auto", "--size", "64x96", "--epochs", "3",
               "--batch", "2", "--threads", "1", "--no-progress", "--source", f"camvid:{camvid},split=train,max=4",
               "--out", str(out)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **env})

    whole = pretrain(tmp_path / "whole.pt", {})
    assert whole.returncode == 0, whole.stderr
    killed = pretrain(tmp_path / "killed.pt", {EXIT_AFTER_EPOCH_ENV: "2"})
    assert killed.returncode != 0 and not card_of(tmp_path / "killed.pt").exists()
    resumed = pretrain(tmp_path / "killed.pt", {})
    assert resumed.returncode == 0 and "resuming" in resumed.stderr and "after epoch 2" in resumed.stderr
    a = torch.load(tmp_path / "whole.pt", weights_only=True)
    b = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert [r["epoch"] for r in json.loads(card_of(tmp_path / "killed.pt").read_text())["history"]] == [0, 1, 2, 3]
    for key, value in a["body"].items():
        torch.testing.assert_close(b["body"][key], value, rtol=1e-5, atol=1e-6)
