"""Every `jitnet` subcommand parses and documents itself."""
import subprocess
import sys

import pytest

from sdk.bench import BENCHES
from sdk.cli import COMMANDS


@pytest.mark.parametrize("argv", [[], *[[c] for c in COMMANDS], *[["bench", b] for b in BENCHES]])
def test_help_of_every_command(argv):
    proc = subprocess.run([sys.executable, "-m", "sdk.cli", *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: jitnet" in proc.stdout


def test_unknown_command_is_refused_with_the_list():
    proc = subprocess.run([sys.executable, "-m", "sdk.cli", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "demo" in proc.stderr
