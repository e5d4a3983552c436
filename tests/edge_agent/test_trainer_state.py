"""Save, crash, restore: the student's state survives, and never half-written."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_agent.state import SnapshotStore
from edge_agent.trainer import load_trainer
from tests.conftest import REPO_ROOT
from tests.edge_agent.test_trainer_learning import _real_example

CHILD = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    sys.path.insert(0, {root!r})
    from edge_agent.trainer import load_trainer
    from tests.edge_agent.test_trainer_learning import _real_example
    image, labels, weights = _real_example("dog", 0, scale=0.25)
    t = load_trainer({art!r}, backend={backend!r}, threads=1)
    for _ in range(3):
        t.train_step(image, labels, weights)
    t.save({state!r})
    r = t.train_step(image, labels, weights)
    np.savez({out!r}, loss=r.loss, logits=r.logits, pred=t.predict_logits(image))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_save_kill_restore_next_step_is_bit_identical(artifacts, tmp_path, backend):
    _real_example("dog", 0, scale=0.25)  # skips here, not inside the child, without ../shared/data
    state, out = tmp_path / "state", tmp_path / "expected.npz"
    code = CHILD.format(root=str(REPO_ROOT), art=str(artifacts), backend=backend, state=str(state), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    expected = np.load(out)

    image, labels, weights = _real_example("dog", 0, scale=0.25)
    trainer = load_trainer(artifacts, backend=backend, threads=1)
    assert trainer.restore(state)
    assert trainer.steps == 3
    r = trainer.train_step(image, labels, weights)
    assert r.loss == float(expected["loss"])
    assert np.array_equal(r.logits, expected["logits"])
    assert np.array_equal(trainer.predict_logits(image), expected["pred"])


def test_restore_skips_a_corrupt_newest_snapshot(artifacts, tmp_path):
    image, labels, weights = _real_example("dog", 0, scale=0.25)
    trainer = load_trainer(artifacts, backend="ort")
    trainer.train_step(image, labels, weights)
    good = trainer.save(tmp_path)
    good_pred = trainer.predict_logits(image)
    trainer.train_step(image, labels, weights)
    newest = trainer.save(tmp_path)
    assert newest.name > good.name
    victim = next(p for p in newest.rglob("*") if p.is_file() and p.name != "snapshot.json")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a torn write
    (tmp_path / ".tmp-123-456").mkdir()  # a crash before the rename leaves only this

    fresh = load_trainer(artifacts, backend="ort")
    assert fresh.restore(tmp_path)
    assert fresh.steps == 1
    assert np.array_equal(fresh.predict_logits(image), good_pred)


# Where the saver dies: inside the checkpoint write (half a file on disk), at the first fsync
# (all files written, none durable, nothing published), and at the publishing rename.
KILL_POINTS = {
    "mid-write": "t.api.CheckpointState.save_checkpoint = die_after_half_a_file",
    "at-fsync": "os.fsync = die",
    "at-publish": "os.replace = die_if_publishing",
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_mid_save_never_leaves_a_corrupt_snapshot(artifacts, tmp_path, point):
    """SIGKILL the saver at a chosen step of the save (injected, so the kill always lands there):
    the snapshot saved before it is intact and restores, nothing half-written is published."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from edge_agent.trainer import load_trainer
        t = load_trainer({str(artifacts)!r}, backend="ort")
        t.save({str(tmp_path)!r})  # the good snapshot that must survive
        real_replace = os.replace

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        def die_after_half_a_file(state, path, **kwargs):
            with open(path, "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
            die()

        def die_if_publishing(src, dst):
            if os.path.basename(str(dst)).startswith("snapshot-"):
                die()
            real_replace(src, dst)

        {KILL_POINTS[point]}
        t.train_step(*__import__("numpy").load({str(tmp_path / "example.npz")!r}).values())
        t.save({str(tmp_path)!r})
        print("not killed", flush=True)
        """
    )
    image, labels, weights = _real_example()
    np.savez(tmp_path / "example.npz", image=image, labels=labels, weights=weights)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    store = SnapshotStore(tmp_path)
    snapshots = store.snapshots()
    assert len(snapshots) == 1, f"a killed save published {snapshots}"
    record = store.verify(snapshots[0])
    assert record is not None and record["steps"] == 0
    restored = load_trainer(artifacts, backend="ort")
    assert restored.restore(tmp_path) and restored.steps == 0


def test_restore_refuses_a_state_from_another_student(artifacts, tmp_path_factory):
    from core.manifest import ArtifactError
    from export.artifacts import generate

    other = tmp_path_factory.mktemp("other") / "cars"
    generate(other, class_names=["person", "auto"], width=0.5, height_px=64, width_px=64)
    state = tmp_path_factory.mktemp("state")
    load_trainer(other, backend="ort").save(state)
    with pytest.raises(ArtifactError, match="use another --state dir"):
        load_trainer(artifacts, backend="ort").restore(state)


def test_restore_from_an_empty_directory_says_nothing_to_restore(artifacts, tmp_path):
    assert load_trainer(artifacts, backend="ort").restore(tmp_path / "none") is False


def test_a_stray_folder_named_like_a_snapshot_is_ignored_not_fatal(tmp_path):
    store = SnapshotStore(tmp_path, keep=5)
    (tmp_path / "snapshot-old").mkdir()  # e.g. a user's manual backup
    first = store.save(lambda d: (d / "w.bin").write_bytes(b"1"), {"step": 1})
    second = store.save(lambda d: (d / "w.bin").write_bytes(b"2"), {"step": 2})
    assert (first.name, second.name) == ("snapshot-00000001", "snapshot-00000002")
    assert store.snapshots() == [second, first]
    assert store.latest()[1]["step"] == 2
    assert (tmp_path / "snapshot-old").is_dir()  # not ours: left alone


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_background_snapshot_holds_the_state_at_the_copy(artifacts, tmp_path, backend):
    """The background writer publishes what was copied when save() was called, even though the
    trainer goes on training while it writes, and a synchronous save meanwhile keeps its staged copy."""
    from edge_agent.student import SnapshotWriter

    image, labels, weights = _real_example("dog", 0, scale=0.25)
    trainer = load_trainer(artifacts, backend=backend, threads=1)
    trainer.train_step(image, labels, weights)
    at_copy = trainer.predict_logits(image)
    writer = SnapshotWriter()
    staged, meta = trainer.stage(tmp_path)  # what writer.save does first, here split to interleave a save
    trainer.train_step(image, labels, weights)
    trainer.save(tmp_path)  # cleans leftovers under the lock: must not take the staged copy for one
    assert staged.is_dir()
    published = writer._executor.submit(SnapshotStore(tmp_path).publish, staged, meta).result()
    future = writer.save(trainer, tmp_path)
    trainer.train_step(image, labels, weights)
    writer.close()
    assert future.result().name > published.name and not staged.exists()

    fresh = load_trainer(artifacts, backend=backend, threads=1)
    assert fresh.restore(tmp_path) and fresh.steps == 2  # the newest: copied after the second step
    shutil.rmtree(future.result())
    other = load_trainer(artifacts, backend=backend, threads=1)
    assert other.restore(tmp_path) and other.steps == 1  # the background one, published after a later save
    assert np.array_equal(other.predict_logits(image), at_copy)
