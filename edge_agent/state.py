"""Crash-safe snapshots of the student's whole training state.

A snapshot is a directory written under a temporary name, checksummed, synced
and then renamed into place, so a crash mid-write leaves at worst a stray
temporary folder, never a half-written snapshot.  Restoring walks snapshots
newest first and takes the first whose checksums verify and whose content
loads.  One that does not (disk corruption, or content that checksums cannot
see is wrong, e.g. a checkpoint of another network) is moved aside as
``rejected-snapshot-N-NANOSECONDS``: kept as evidence, never restored again, never
deleted by the retention of newer snapshots.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from core.digest import sha256_file

log = logging.getLogger(__name__)

META = "snapshot.json"
PREFIX = "snapshot-"
REJECTED = "rejected-"
LOCK = ".lock"

# Staging folders this process has filled but not yet published (a background
# writer's queue): leftover cleanup must not take them for a dead writer's.
_STAGED: set[Path] = set()
_STAGED_LOCK = threading.Lock()


class StateLocked(RuntimeError):
    """Another agent writes this state directory."""


class StateDirError(RuntimeError):
    """The state directory cannot be created or is not a directory."""


class SnapshotUnusable(RuntimeError):
    """A snapshot whose checksums verify but whose content the trainer cannot load."""


def ensure_state_dir(root: Path | str) -> Path:
    """Create ``root`` if needed; a path that is a file gets a one-line error saying what to do."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StateDirError(
            f"state directory {root} is a file, not a directory; pass a directory as --state "
            "(state_dir=): it is created if missing, so a new name works, or move the file away"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((a for a in root.parents if a.exists() and not a.is_dir()), None)
        why = f"{blocker} is a file" if blocker is not None else (exc.strerror or str(exc))
        raise StateDirError(
            f"cannot create the state directory {root} ({why}); pass a directory you can write to as --state"
        ) from exc
    return root


class StateLock:
    """One writer per state directory: an exclusive flock on ``DIR/.lock``.

    flock belongs to the open file, not to a PID, so it holds across PID
    namespaces (two containers sharing a volume) and vanishes when the holder
    dies, however it dies.  Within one process, a second StateLock on the same
    directory is refused too; ``SnapshotStore.save`` reuses the lock this
    process holds.
    """

    _held: dict[str, "StateLock"] = {}

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._fd: Optional[int] = None

    @classmethod
    def held(cls, root: Path | str) -> Optional["StateLock"]:
        return cls._held.get(str(Path(root).resolve()))

    def acquire(self) -> "StateLock":
        ensure_state_dir(self.root)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                try:
                    holder = (self.root / LOCK).read_text().strip() or "another process"
                except OSError:
                    holder = "another process"
                raise StateLocked(
                    f"state directory {self.root} is in use by {holder}; two agents must not share one "
                    "(give each camera its own --state DIR)"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
        self._fd = fd
        StateLock._held[str(self.root.resolve())] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        StateLock._held.pop(str(self.root.resolve()), None)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


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
        """Call ``write(tmp_dir)`` to fill a new snapshot, then publish it atomically.

        Holds the directory's lock while it writes (the one this process already
        holds, else a temporary one): a second writer fails with StateLocked.
        """
        ensure_state_dir(self.root)
        if StateLock.held(self.root) is not None:
            return self._save_locked(write, meta)
        with StateLock(self.root):
            return self._save_locked(write, meta)

    def stage(self, write: Callable[[Path], None]) -> Path:
        """Fill a new staging folder now with ``write(folder)``: the copy that :meth:`publish` makes durable.

        The trainer's state is copied here on the caller's thread (it must not
        change mid-copy); checksums, fsyncs and the atomic rename can then run
        on a background writer, off the frame thread.
        """
        ensure_state_dir(self.root)
        tmp = self.root / f".tmp-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        with _STAGED_LOCK:
            _STAGED.add(tmp)
        try:
            write(tmp)
            if not _files(tmp):
                raise RuntimeError("snapshot writer wrote no files")
        except BaseException:
            self.discard(tmp)
            raise
        return tmp

    def discard(self, staged: Path) -> None:
        with _STAGED_LOCK:
            _STAGED.discard(staged)
        shutil.rmtree(staged, ignore_errors=True)

    def publish(self, staged: Path, meta: dict[str, Any]) -> Path:
        """Checksum, sync and rename a staged folder into the next snapshot (any thread)."""
        if StateLock.held(self.root) is not None:
            return self._publish_locked(staged, meta)
        with StateLock(self.root):
            return self._publish_locked(staged, meta)

    def _save_locked(self, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        return self._publish_locked(self.stage(write), meta)

    def _publish_locked(self, tmp: Path, meta: dict[str, Any]) -> Path:
        existing = self.snapshots()
        number = int(existing[0].name[len(PREFIX):]) + 1 if existing else 1
        try:
            files = {str(p.relative_to(tmp)): sha256_file(p) for p in _files(tmp)}
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
            self.discard(tmp)
            raise
        finally:
            with _STAGED_LOCK:
                _STAGED.discard(tmp)
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
        """Remove trash and the temporary folders of writers that died mid-save.

        Called with the lock held, so no other writer is alive: every leftover
        is stale, whatever PID (or PID namespace) its name carries.
        """
        with _STAGED_LOCK:
            staged = set(_STAGED)
        for p in self.root.iterdir():
            if p.name.startswith((".trash-", ".tmp-")) and p not in staged:
                shutil.rmtree(p, ignore_errors=True)

    def verify(self, snapshot: Path) -> Optional[dict[str, Any]]:
        """The snapshot's metadata if every file is present and intact, else None."""
        try:
            record = json.loads((snapshot / META).read_text())
            files = record["files"]
            for rel, digest in files.items():
                if sha256_file(snapshot / rel) != digest:
                    return None
            return record
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def restore(self, load: Callable[[Path, dict[str, Any]], None],
                fatal: tuple[type[BaseException], ...] = ()) -> Optional[tuple[Path, dict[str, Any]]]:
        """``load(folder, record)`` the newest snapshot that verifies *and* loads; older ones are the fallback.

        ``load`` must be all-or-nothing (build everything, then assign): when it
        raises, the trainer is as it was and the next older snapshot is tried.
        A snapshot that fails either way is moved aside (:meth:`reject`), so
        it is neither tried again at every start nor deleted as an old one.
        """
        rejected = []
        for snapshot in self.snapshots():
            record = self.verify(snapshot)
            if record is None:
                rejected.append(self.reject(snapshot, "corrupt or incomplete: its files do not match their checksums"))
                continue
            try:
                load(snapshot, record)
            except fatal:
                raise
            except Exception as exc:  # noqa: BLE001 - an unreadable snapshot falls back to an older one
                rejected.append(self.reject(snapshot, f"corrupt or incompatible with this student ({exc})"))
                continue
            return snapshot, record
        if rejected:
            log.warning("no usable snapshot in the state directory %s: the student starts fresh "
                        "(the rejected ones are kept: %s)", self.root, ", ".join(str(p) for p in rejected))
        return None

    def reject(self, snapshot: Path, why: str) -> Path:
        """Move a snapshot that cannot be restored out of the way, keeping it for inspection; where it went."""
        target = self.root / f"{REJECTED}{snapshot.name}-{time.time_ns()}"
        try:
            os.replace(snapshot, target)
        except OSError as exc:
            log.warning("snapshot %s in the state directory is %s; could not move it aside (%s), "
                        "trying an older one", snapshot, why, exc)
            return snapshot
        log.warning("snapshot %s in the state directory is %s; moved it to %s (delete it once looked at) "
                    "and trying an older one", snapshot, why, target)
        return target

    def latest(self) -> Optional[tuple[Path, dict[str, Any]]]:
        """The newest intact snapshot; corrupt ones are logged and skipped."""
        for snapshot in self.snapshots():
            record = self.verify(snapshot)
            if record is not None:
                return snapshot, record
            log.warning("skipping corrupt or incomplete snapshot %s", snapshot)
        return None
