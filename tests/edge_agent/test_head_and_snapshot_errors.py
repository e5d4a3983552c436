"""A manifest that does not fit its model, a snapshot that verifies but does not load, a state path
that is a file: each refused or set aside with a message that names the path and says what to do."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from core.digest import sha256_file
from core.manifest import ArtifactError
from edge_agent.state import SnapshotStore, StateDirError, StateLock
from edge_agent.trainer import load_trainer
from tests.edge_agent.test_trainer_learning import _real_example


def _with_classes(artifacts, tmp_path, names):
    target = tmp_path / "art"
    shutil.copytree(artifacts, target)
    raw = json.loads((target / "manifest.json").read_text())
    raw["class_names"] = names
    (target / "manifest.json").write_text(json.dumps(raw))
    return target


def test_a_manifest_listing_more_classes_than_the_head_is_refused_at_load(artifacts, tmp_path):
    edited = _with_classes(artifacts, tmp_path, ["background", "person", "auto"])
    with pytest.raises(ArtifactError) as info:
        load_trainer(edited, backend="ort")
    message = str(info.value)
    assert "lists 3 classes" in message and "produces 2" in message
    assert f"jitnet export --classes person,auto --out {edited}" in message
    assert "\n" not in message


def test_the_torch_backend_refuses_the_same_mismatch(artifacts, tmp_path):
    pytest.importorskip("torch")
    edited = _with_classes(artifacts, tmp_path, ["background", "person", "auto"])
    with pytest.raises(ArtifactError, match="jitnet export"):
        load_trainer(edited, backend="torch")


def _rewrite_with_matching_checksums(snapshot, name, data):
    """Bad content that the checksums cannot see: the file and its recorded digest changed together."""
    (snapshot / name).write_bytes(data)
    record = json.loads((snapshot / "snapshot.json").read_text())
    record["files"][name] = sha256_file(snapshot / name)
    (snapshot / "snapshot.json").write_text(json.dumps(record))


def test_a_snapshot_with_bad_content_but_good_checksums_falls_back_and_is_kept(artifacts, tmp_path, caplog):
    image, labels, weights = _real_example("dog", 0, scale=0.25)
    trainer = load_trainer(artifacts, backend="ort", threads=1)
    trainer.train_step(image, labels, weights)
    good = trainer.save(tmp_path)
    good_logits = trainer.predict_logits(image)
    trainer.train_step(image, labels, weights)
    bad = trainer.save(tmp_path)
    _rewrite_with_matching_checksums(bad, "checkpoint", b"\x08\x01garbage" * 512)
    assert SnapshotStore(tmp_path).verify(bad) is not None  # the checksums really do match

    fresh = load_trainer(artifacts, backend="ort", threads=1)
    with caplog.at_level(logging.WARNING):
        assert fresh.restore(tmp_path)
    assert fresh.steps == 1 and np.array_equal(fresh.predict_logits(image), good_logits)  # the previous good one
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"snapshot {bad} in the state directory is corrupt or incompatible" in said
    assert "artifacts" not in said and "jitnet export" not in said  # not blamed on the artifacts
    rejected = [p for p in tmp_path.iterdir() if p.name.startswith("rejected-" + bad.name)]
    assert len(rejected) == 1 and (rejected[0] / "checkpoint").is_file()  # the evidence, moved aside
    assert SnapshotStore(tmp_path).snapshots() == [good]

    for _ in range(3):  # newer snapshots and their retention (keep 2) never delete the rejected one
        fresh.train_step(image, labels, weights)
        fresh.save(tmp_path)
    assert rejected[0].is_dir()
    assert len(SnapshotStore(tmp_path).snapshots()) == 2


def test_only_bad_snapshots_start_fresh_without_deleting_them(artifacts, tmp_path, caplog):
    trainer = load_trainer(artifacts, backend="ort", threads=1)
    bad = trainer.save(tmp_path)
    _rewrite_with_matching_checksums(bad, "checkpoint", b"")
    fresh = load_trainer(artifacts, backend="ort", threads=1)
    with caplog.at_level(logging.WARNING):
        assert fresh.restore(tmp_path) is False
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "the student starts fresh" in said and str(tmp_path) in said
    assert [p.name.startswith("rejected-snapshot-") for p in tmp_path.iterdir() if not p.name.startswith(".")] == [True]


def test_a_snapshot_of_another_network_with_this_students_name_is_refused_as_a_snapshot(
        artifacts, tmp_path_factory, caplog):
    """Checksums and identity both match; the checkpoint inside is a 3-class network's."""
    from export.artifacts import generate

    other = tmp_path_factory.mktemp("other") / "cars"
    generate(other, class_names=["person", "auto"], width=0.5, height_px=64, width_px=64)
    state = tmp_path_factory.mktemp("state")
    snapshot = load_trainer(artifacts, backend="ort", threads=1).save(state)
    _rewrite_with_matching_checksums(snapshot, "checkpoint", (other / "checkpoint").read_bytes())
    fresh = load_trainer(artifacts, backend="ort", threads=1)
    with caplog.at_level(logging.WARNING):
        assert fresh.restore(state) is False
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"snapshot {snapshot} in the state directory is corrupt or incompatible" in said
    assert "jitnet export" not in said


def test_a_state_path_that_is_a_file_gets_a_one_line_error(tmp_path):
    path = tmp_path / "state"
    path.write_text("not a directory")
    for attempt in (lambda: StateLock(path).acquire(),
                    lambda: SnapshotStore(path).save(lambda d: (d / "w").write_bytes(b"1"), {})):
        with pytest.raises(StateDirError) as info:
            attempt()
        message = str(info.value)
        assert f"state directory {path} is a file" in message and "--state" in message
        assert "Errno" not in message and "\n" not in message
    assert path.read_text() == "not a directory"  # untouched
    with pytest.raises(StateDirError, match=f"cannot create the state directory {path}/cam0 \\({path} is a file\\)"):
        StateLock(path / "cam0").acquire()
