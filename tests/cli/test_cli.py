"""Every `jitnet` subcommand parses and documents itself."""
import subprocess
import sys

import pytest

from bench.cli import BENCHES
from cli.main import COMMANDS


@pytest.mark.parametrize("argv", [[], *[[c] for c in COMMANDS], *[["bench", b] for b in BENCHES]])
def test_help_of_every_command(argv):
    proc = subprocess.run([sys.executable, "-m", "cli.main", *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: jitnet" in proc.stdout


def test_top_level_help_lists_every_benchmark_of_the_registry():
    proc = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = " ".join(proc.stdout.split())  # argparse wraps long help lines
    assert f"benchmarks ({' | '.join(BENCHES)})" in listed, proc.stdout


def test_unknown_command_is_refused_with_the_list():
    proc = subprocess.run([sys.executable, "-m", "cli.main", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "demo" in proc.stderr


def test_bad_input_gets_one_line_error_and_exit_2_not_a_traceback(tmp_path):
    cases = [
        (["run", str(tmp_path / "missing.mp4"), "--teacher", "grpc://127.0.0.1:1",
          "--artifacts", str(tmp_path / "no-artifacts")], "no-artifacts"),
        (["export", "--classes", "person", "--size", "70x64", "--out", str(tmp_path / "a")], "32"),
    ]
    for argv, hint in cases:
        proc = subprocess.run([sys.executable, "-m", "cli.main", *argv], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and f"jitnet {argv[0]}: error:" in proc.stderr, proc.stderr[-2000:]
        assert hint in proc.stderr
