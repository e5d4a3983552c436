"""The layers import one way: the import-linter contracts in pyproject.toml hold on this tree,
and they catch an upward import when one is planted in a copy of it.  Inside the layers, no
modules import each other in a circle (function-level and TYPE_CHECKING imports included), and
no module is over MAX_LINES lines; both checks are shown to fail on a planted offender."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "protos", "export", "edge_agent", "teacher_server", "sdk", "evaluation", "bench", "cli")
#: Longer than this, a module is doing more than one job (the style note says ~400-500).
MAX_LINES = 500



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


def _needs_import_linter() -> None:
    pytest.importorskip("importlinter", reason="import-linter comes with the dev extra: pip install -e '.[dev]'")


def test_the_tree_keeps_its_layers():
    _needs_import_linter()
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
    _needs_import_linter()
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {planted}\n")
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout, result.stdout


# -- import cycles and module size ---------------------------------------------------------------
def _modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the root packages (a package is its __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its file: at the top, in a
    function (a lazy import still runs, and still ties the two modules together) or under
    TYPE_CHECKING.  ``from pkg import x`` counts as importing the module ``pkg.x`` when x
    is one, else ``pkg``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.update(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                           for alias in node.names)
    edges = set()
    for target in targets:
        while target and target not in known:  # import a.b.c where a.b.c is a function, not a module
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def import_cycles(root: Path) -> list[list[str]]:
    """Every set of modules that import each other in a circle (strongly connected components)."""
    known = _modules(root)
    graph = {name: sorted(_imported(name, path, known)) for name, path in known.items()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []
    for start in graph:  # Tarjan's algorithm, iterative (no recursion limit on a deep tree)
        if start in order:
            continue
        work = [(start, iter(graph[start]))]
        order[start] = low[start] = len(order)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in order:
                    order[child] = low[child] = len(order)
                    stack.append(child)
                    work.append((child, iter(graph[child])))
                elif child in stack:
                    low[node] = min(low[node], order[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == order[node]:
                members = []
                while True:
                    member = stack.pop()
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    cycles.append(sorted(members))
    return sorted(cycles)


def long_modules(root: Path) -> list[str]:
    return [f"{path.relative_to(root)}: {n} lines" for path in _modules(root).values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES]


def test_no_modules_import_each_other_in_a_circle():
    cycles = import_cycles(REPO_ROOT)
    assert not cycles, "modules that import each other (lazy imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_is_over_the_line_limit():
    offenders = long_modules(REPO_ROOT)
    assert not offenders, f"modules over {MAX_LINES} lines (split them by job): " + ", ".join(offenders)


@pytest.mark.parametrize(
    "module, planted, cycle",
    [
        # sdk/session.py imports sdk.artifact_cache at the top; a lazy import back closes the circle.
        ("sdk/artifact_cache.py", "\n\ndef _planted():\n    from sdk.session import Session\n",
         ["sdk.artifact_cache", "sdk.session"]),
        # evaluation/baselines.py imports evaluation.flow in a function; a TYPE_CHECKING import back counts too.
        ("evaluation/flow.py", "\nimport typing\n\nif typing.TYPE_CHECKING:\n    from . import baselines\n",
         ["evaluation.baselines", "evaluation.flow"]),
    ],
)
def test_a_planted_circle_is_found(tmp_path, module, planted, cycle):
    root = _copy_tree(tmp_path)
    assert cycle not in import_cycles(root)
    path = root / module
    path.write_text(path.read_text() + planted)
    assert cycle in import_cycles(root)


def test_a_planted_long_module_is_named(tmp_path):
    root = _copy_tree(tmp_path)
    (root / "core" / "planted.py").write_text("x = 0\n" * (MAX_LINES + 1))
    assert f"core/planted.py: {MAX_LINES + 1} lines" in long_modules(root)
