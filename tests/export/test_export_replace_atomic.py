"""Re-exporting over an artifact directory: killed at any step, the directory is whole, old or new."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from core.manifest import load_manifest
from export.artifacts import FAULT_ENV, replace_dir
from tests.conftest import REPO_ROOT

EXPORT = textwrap.dedent("""
    import sys
    from export.artifacts import generate
    generate(sys.argv[1], class_names=["person", "auto"], width=0.25, height_px=64, width_px=64, seed=1)
""")


def _tree_digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("step", ["before-replace", "after-replace"])
def test_an_export_killed_mid_replace_leaves_a_whole_directory(artifacts, tmp_path, step):
    out = tmp_path / "person"
    shutil.copytree(artifacts, out)
    old = _tree_digest(out)
    proc = subprocess.run([sys.executable, "-c", EXPORT, str(out)], cwd=REPO_ROOT,
                          env={**os.environ, FAULT_ENV: step}, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    manifest = load_manifest(out)  # whole and loadable either way
    if step == "before-replace":
        assert _tree_digest(out) == old
    else:
        assert manifest.class_names == ["background", "person", "auto"]
        for name in manifest.files.values():
            assert (out / name).is_file()


def test_replace_dir_swaps_a_directory_in_whole(tmp_path):
    target, new = tmp_path / "a", tmp_path / ".a.new"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert not new.exists()
