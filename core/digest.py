"""One way to fingerprint a file: snapshots, checkpoints, cards and caches all use it."""
from __future__ import annotations

import hashlib
import os


def sha256_file(path: "str | os.PathLike[str]") -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (checkpoints are megabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
