"""One writer per state directory; a snapshot that will not load falls back to an older one, all or nothing."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_agent.state import SnapshotStore, StateLock, StateLocked
from edge_agent.trainer import load_trainer
from tests.conftest import REPO_ROOT

HOLDER = textwrap.dedent("""
    import sys
    from edge_agent.state import StateLock
    lock = StateLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
""")


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO_ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateLocked, match="in use by pid"):
            StateLock(tmp_path).acquire()
        with pytest.raises(StateLocked):  # nor can it write a snapshot behind the holder's back
            SnapshotStore(tmp_path).save(lambda d: (d / "w").write_bytes(b"x"), {})
        assert SnapshotStore(tmp_path).snapshots() == []
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # The holder is gone (however it ended): the directory is free again.
    with StateLock(tmp_path):
        SnapshotStore(tmp_path).save(lambda d: (d / "w").write_bytes(b"x"), {})
    assert len(SnapshotStore(tmp_path).snapshots()) == 1


def test_two_locks_in_one_process_collide_and_save_reuses_the_held_one(tmp_path):
    with StateLock(tmp_path):
        with pytest.raises(StateLocked):
            StateLock(tmp_path).acquire()
        SnapshotStore(tmp_path).save(lambda d: (d / "w").write_bytes(b"x"), {})


def test_leftovers_of_a_dead_writer_in_another_pid_namespace_are_cleaned(tmp_path):
    # PID 1 exists in every namespace: a PID check would keep this folder forever.
    stale = tmp_path / ".tmp-1-123"
    stale.mkdir(parents=True)
    (stale / "half").write_bytes(b"x")
    SnapshotStore(tmp_path).save(lambda d: (d / "w").write_bytes(b"x"), {})
    assert not stale.exists()


def test_restore_falls_back_to_an_older_snapshot_that_loads(artifacts, tmp_path):
    trainer = load_trainer(artifacts)
    image = np.random.default_rng(0).integers(0, 255, (128, 192, 3), dtype=np.uint8)
    labels = (image[:, :, 0] > 128).astype(np.uint8)
    weights = np.ones(labels.shape, np.float32)
    for _ in range(3):
        trainer.train_step(image, labels, weights)
    trainer.save(tmp_path)
    good = trainer.predict(image)
    for _ in range(3):
        trainer.train_step(image, labels, weights)
    newest = trainer.save(tmp_path)
    # The newest snapshot's checksums verify but its checkpoint is not one ORT can read
    # (written by a newer runtime, say): the checksums are recomputed to match.
    import json
    from core.digest import sha256_file
    from edge_agent.state import META
    (newest / "checkpoint").write_bytes(b"not a checkpoint")
    record = json.loads((newest / META).read_text())
    record["files"]["checkpoint"] = sha256_file(newest / "checkpoint")
    (newest / META).write_text(json.dumps(record))

    fresh = load_trainer(artifacts)
    assert fresh.restore(tmp_path)
    assert fresh.steps == 3
    assert np.array_equal(fresh.predict(image), good)


def test_a_restore_that_fails_leaves_the_trainer_untouched(artifacts, tmp_path):
    trainer = load_trainer(artifacts)
    image = np.random.default_rng(1).integers(0, 255, (128, 192, 3), dtype=np.uint8)
    before = trainer.predict(image)
    snapshot = trainer.save(tmp_path)
    import json
    from core.digest import sha256_file
    from edge_agent.state import META
    (snapshot / "checkpoint").write_bytes(b"garbage")
    record = json.loads((snapshot / META).read_text())
    record["files"]["checkpoint"] = sha256_file(snapshot / "checkpoint")
    (snapshot / META).write_text(json.dumps(record))
    assert trainer.restore(tmp_path) is False
    assert np.array_equal(trainer.predict(image), before)
    trainer.train_step(image, (image[:, :, 1] > 100).astype(np.uint8), np.ones((128, 192), np.float32))
