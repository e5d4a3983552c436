"""Re-exporting over an artifact directory: killed at any step, the directory is whole, old or new.

The export runs in a real subprocess that SIGKILLs itself at the step under
test: the fault is planted by the test's own script (in the collaborator the
step calls), not by a hook in the product code.
"""
import hashlib
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from core.manifest import load_manifest
from export.atomic_dir import replace_dir
from tests.conftest import REPO_ROOT

#: Where the export dies: right after the new directory is complete (its manifest, the last file, is
#: written) but before the swap; or right after the swap, before the old directory is deleted.
CRASH = {
    "before-replace": """
        from core.manifest import Manifest
        save = Manifest.save
        def save_then_die(self, folder):
            save(self, folder)
            os.kill(os.getpid(), signal.SIGKILL)
        Manifest.save = save_then_die
    """,
    "after-replace": """
        import shutil
        shutil.rmtree = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    """,
}
EXPORT = """
import os, signal, sys
{crash}
from export.artifacts import generate
generate(sys.argv[1], class_names=["person", "auto"], width=0.25, height_px=64, width_px=64, seed=1)
"""


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
    script = EXPORT.format(crash=textwrap.dedent(CRASH[step]))
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO_ROOT, capture_output=True, timeout=600)
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
