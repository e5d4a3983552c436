"""Crash-safe snapshots of the student's whole training state.

A snapshot is a directory written under a temporary name, checksummed, synced
and then renamed into place, so a crash mid-write leaves at worst a stray
temporary folder, never a half-written snapshot.  Restoring walks snapshots
newest first and takes the first whose checksums verify.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

META = "snapshot.json"
PREFIX = "snapshot-"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SnapshotStore:
    """Numbered snapshots under one state directory, the newest ``keep`` kept."""

    def __init__(self, root: Path | str, keep: int = 2):
        self.root = Path(root)
        self.keep = max(1, keep)

    def snapshots(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        # Only our own names: a stray "snapshot-old" folder someone left there is ignored, not fatal.
        found = [p for p in self.root.iterdir()
                 if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)

    def save(self, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        """Call ``write(tmp_dir)`` to fill a new snapshot, then publish it atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        existing = self.snapshots()
        number = int(existing[0].name[len(PREFIX):]) + 1 if existing else 1
        tmp = self.root / f".tmp-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            write(tmp)
            files = {str(p.relative_to(tmp)): _digest(p) for p in _files(tmp)}
            if not files:
                raise RuntimeError("snapshot writer wrote no files")
            record = {**meta, "files": files, "saved_at": time.time()}
            (tmp / META).write_text(json.dumps(record, indent=2, sort_keys=True))
            for p in [*_files(tmp), tmp / META]:
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            final = self.root / f"{PREFIX}{number:08d}"
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.snapshots()[self.keep:]:
            # Rename first (atomic), delete after: a crash mid-delete leaves
            # a hidden trash folder, never a published snapshot with files missing.
            trash = self.root / f".trash-{old.name}-{time.monotonic_ns()}"
            try:
                os.replace(old, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        self._clean_leftovers()
        return final

    def _clean_leftovers(self) -> None:
        """Remove trash and the temporary folders of processes that died mid-save."""
        for p in self.root.iterdir():
            if p.name.startswith(".trash-"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".tmp-"):
                try:
                    pid = int(p.name.split("-")[1])
                    os.kill(pid, 0)
                except ProcessLookupError:
                    shutil.rmtree(p, ignore_errors=True)
                except (ValueError, IndexError, PermissionError):
                    pass

    def verify(self, snapshot: Path) -> Optional[dict[str, Any]]:
        """The snapshot's metadata if every file is present and intact, else None."""
        try:
            record = json.loads((snapshot / META).read_text())
            files = record["files"]
            for rel, digest in files.items():
                if _digest(snapshot / rel) != digest:
                    return None
            return record
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def latest(self) -> Optional[tuple[Path, dict[str, Any]]]:
        """The newest intact snapshot; corrupt ones are logged and skipped."""
        for snapshot in self.snapshots():
            record = self.verify(snapshot)
            if record is not None:
                return snapshot, record
            log.warning("skipping corrupt or incomplete snapshot %s", snapshot)
        return None
