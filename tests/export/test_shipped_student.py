"""The shipped pre-trained student: present, small, what its card says, and the default start."""
from __future__ import annotations

import json

import pytest

from export.jitnet import load_student_start
from export.pretrain.card import card_of
from export.pretrained import SHIPPED, InitError, resolve_init, sha256_of, shipped_checkpoint

CHECKPOINT = SHIPPED[0.5]


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
