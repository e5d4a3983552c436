"""The layers import one way: the import-linter contracts in pyproject.toml hold on this tree,
and they catch an upward import when one is planted in a copy of it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "protos", "export", "edge_agent", "teacher_server", "sdk", "evaluation", "bench", "cli")

pytest.importorskip("importlinter", reason="import-linter comes with the dev extra: pip install -e '.[dev]'")


def _lint(root: Path) -> subprocess.CompletedProcess:
    # `python -c` puts the working directory first on sys.path, so the copy under test is
    # analysed, not the installed (editable) packages.
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename='pyproject.toml'))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)


def _copy_tree(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.pt"))
    shutil.copy(REPO_ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_tree_keeps_its_layers():
    result = _lint(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "module, planted, broken",
    [
        ("core/metrics.py", "import edge_agent.agent", "core is not allowed to import edge_agent"),
        ("export/artifacts.py", "from edge_agent import stride", "export is not allowed to import edge_agent"),
        ("teacher_server/labeler.py", "import sdk.session", "teacher_server is not allowed to import sdk"),
        ("sdk/session.py", "import evaluation.cost", "sdk is not allowed to import evaluation"),
    ],
)
def test_a_planted_upward_import_breaks_the_contract(tmp_path, module, planted, broken):
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {planted}\n")
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout, result.stdout
