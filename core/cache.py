"""Where jitnet-edge keeps what it can rebuild: exported artifacts, teacher labels, distilled frames.

One root for every cache, so one variable moves them all (a bigger disk, a
test's temporary folder) and one `rm -rf` clears them.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Set it to put every cache somewhere else.
CACHE_ENV = "JITNET_CACHE"


def cache_root() -> Path:
    """``$JITNET_CACHE``, else ``~/.cache/jitnet-edge``; read at each call, so a changed variable is obeyed."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "jitnet-edge"
