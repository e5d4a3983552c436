from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Width-0.5 person artifacts, exported once per session."""
    from export.artifacts import generate

    out = tmp_path_factory.mktemp("artifacts") / "person"
    generate(out, class_names=["person"], width=0.5, height_px=128, width_px=192, seed=0)
    return out
