"""Teacher label maps kept on disk, so re-running an evaluation never re-runs the teacher.

The teacher's labels are the ground truth of the stream evaluation and by far
its most expensive part (Mask R-CNN on every frame).  They depend only on the
video, the teacher (name and version), the requested class groups and the
score threshold; ``CacheKey`` holds exactly those, and its digest names one
folder under the cache root:

    ROOT/<digest>/manifest.json      the key in readable form
    ROOT/<digest>/0000000.npz        labels of frame 0 (uint8 H x W, zip-compressed)
    ...

Every file is written to a temporary name in the same folder and renamed into
place, so a run killed mid-write leaves either the old entry or none, never a
half-written one.  Reads verify the zip CRC, dtype and rank; an entry that
fails is logged, deleted and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Bytes of a video file hashed to identify it (with its size).
IDENTITY_BYTES = 4 << 20


def video_identity(path: Union[str, Path], *, mode: str = "content") -> str:
    """A string that changes when the video changes.

    ``content`` (default) hashes the size and the first 4 MiB, so a copied or
    moved file still hits the cache and a re-encoded one does not.  ``stat``
    uses the resolved path, size and modification time: free, but any touch
    or move invalidates.  A folder of frames (DAVIS layout) is identified by
    its file names and sizes plus the first file's content.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; only files and frame folders can be cached, not live streams")
    if mode == "stat":
        st = p.stat()
        return f"stat:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if mode != "content":
        raise ValueError(f"mode must be 'content' or 'stat', got {mode!r}")
    h = hashlib.sha256()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file())
        for f in files:
            h.update(f"{f.name}:{f.stat().st_size}\n".encode())
        first = files[0] if files else None
    else:
        h.update(f"{p.stat().st_size}\n".encode())
        first = p
    if first is not None:
        with open(first, "rb") as fh:
            h.update(fh.read(IDENTITY_BYTES))
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything the teacher's labels depend on.

    ``class_groups`` keeps the order of the groups (group k is label k) but
    sorts the names inside each group, which do not change the labels.
    ``extra`` is for anything else that does (e.g. the teacher's input size).
    """

    video: str
    teacher: str
    teacher_version: str
    class_groups: tuple[tuple[str, ...], ...]
    score_threshold: float
    extra: str = ""

    @classmethod
    def make(
        cls,
        video: str,
        teacher: str,
        teacher_version: str,
        class_groups: Sequence[Sequence[str]],
        score_threshold: float,
        extra: str = "",
    ) -> "CacheKey":
        groups = tuple(tuple(sorted(str(n) for n in g)) for g in class_groups)
        return cls(str(video), str(teacher), str(teacher_version), groups, float(score_threshold), str(extra))

    @classmethod
    def for_video(
        cls,
        path: Union[str, Path],
        teacher: str,
        teacher_version: str,
        class_groups: Sequence[Sequence[str]],
        score_threshold: float,
        extra: str = "",
        *,
        mode: str = "content",
    ) -> "CacheKey":
        """Key of a video file or frame folder (see ``video_identity``)."""
        return cls.make(video_identity(path, mode=mode), teacher, teacher_version, class_groups, score_threshold, extra)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["class_groups"] = [list(g) for g in self.class_groups]
        return d

    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


class LabelCache:
    """On-disk cache of teacher label maps, one compressed file per frame.

    ``hits``, ``misses`` and ``corrupt`` count what happened since creation,
    so a caller can report how much teacher work a run actually did.
    """

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    # -- layout -------------------------------------------------------------
    def entry_dir(self, key: CacheKey) -> Path:
        return self.root / key.digest()

    def frame_path(self, key: CacheKey, frame_index: int) -> Path:
        if frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {frame_index}")
        return self.entry_dir(key) / f"{frame_index:07d}.npz"

    def _ensure_entry(self, key: CacheKey) -> Path:
        d = self.entry_dir(key)
        manifest = d / "manifest.json"
        if manifest.exists():
            return d
        d.mkdir(parents=True, exist_ok=True)
        body = {"format": FORMAT_VERSION, "key": key.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _atomic_write(manifest, lambda fh: fh.write(json.dumps(body, indent=2).encode()))
        return d

    def manifest(self, key: CacheKey) -> Optional[dict]:
        """The entry's manifest, or None if nothing was cached for ``key`` yet."""
        path = self.entry_dir(key) / "manifest.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def recorded_seconds(self, key: CacheKey) -> dict[int, float]:
        """Measured compute time of each cached frame that has one (frame index -> seconds)."""
        out: dict[int, float] = {}
        for i in self.cached_indices(key):
            try:
                with np.load(self.frame_path(key, i), allow_pickle=False) as data:
                    if "seconds" in data.files:
                        out[i] = float(data["seconds"])
            except _CORRUPT:
                continue
        return out

    def cached_indices(self, key: CacheKey) -> list[int]:
        """Frame indices with a stored entry (not verified; ``get`` verifies)."""
        d = self.entry_dir(key)
        if not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.npz") if p.stem.isdigit())

    # -- single frames ------------------------------------------------------
    def get(self, key: CacheKey, frame_index: int) -> Optional[np.ndarray]:
        """Stored labels of a frame, or None when absent or corrupt (a corrupt file is removed)."""
        path = self.frame_path(key, frame_index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                labels = data["labels"]
            if labels.dtype != np.uint8 or labels.ndim != 2:
                raise ValueError(f"stored labels are {labels.dtype} {labels.shape}, expected uint8 (H, W)")
        except _CORRUPT as exc:
            self.corrupt += 1
            log.warning("label cache entry %s is corrupt (%s); it will be recomputed", path, exc)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            return None
        return labels

    def put(self, key: CacheKey, frame_index: int, labels: np.ndarray, seconds: Optional[float] = None) -> None:
        """Store a frame's labels (uint8, H x W) atomically, with what computing them cost.

        ``seconds`` is kept beside the labels so the cost model can use the
        teacher's real cost even on a run that never calls the teacher.
        """
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 (H, W), got {labels.dtype} {labels.shape}")
        self._ensure_entry(key)
        arrays = {"labels": labels}
        if seconds is not None:
            arrays["seconds"] = np.float64(seconds)
        _atomic_write(self.frame_path(key, frame_index), lambda fh: np.savez_compressed(fh, **arrays))

    def get_or_compute(self, key: CacheKey, frame_index: int, compute_fn: Callable[[int], np.ndarray]) -> np.ndarray:
        """Cached labels of a frame, or ``compute_fn(frame_index)`` stored and returned."""
        labels = self.get(key, frame_index)
        if labels is not None:
            self.hits += 1
            return labels
        self.misses += 1
        t0 = time.perf_counter()
        labels = np.asarray(compute_fn(frame_index), dtype=np.uint8)
        self.put(key, frame_index, labels, seconds=time.perf_counter() - t0)
        return labels

    # -- many frames --------------------------------------------------------
    def get_or_compute_many(
        self,
        key: CacheKey,
        frame_indices: Iterable[int],
        compute_batch_fn: Callable[[list[int]], Sequence[np.ndarray]],
        *,
        batch_size: int = 8,
    ) -> dict[int, np.ndarray]:
        """Labels of many frames; only the missing ones are computed, ``batch_size`` at a time.

        Batches let a teacher server batch its GPU work; each batch is stored
        before the next is computed, so an interrupted run keeps its progress.
        """
        out: dict[int, np.ndarray] = {}
        missing: list[int] = []
        for i in frame_indices:
            labels = self.get(key, i)
            if labels is None:
                missing.append(i)
            else:
                self.hits += 1
                out[i] = labels
        for start in range(0, len(missing), max(1, batch_size)):
            batch = missing[start : start + max(1, batch_size)]
            t0 = time.perf_counter()
            results = list(compute_batch_fn(batch))
            per_frame = (time.perf_counter() - t0) / len(batch)
            if len(results) != len(batch):
                raise ValueError(f"compute_batch_fn returned {len(results)} label maps for {len(batch)} frames")
            for i, labels in zip(batch, results):
                labels = np.asarray(labels, dtype=np.uint8)
                self.put(key, i, labels, seconds=per_frame)
                out[i] = labels
            self.misses += len(batch)
        return out

    def wrap(self, key: CacheKey, teacher_fn: Callable[[int, np.ndarray], np.ndarray]) -> Callable[[int, np.ndarray], np.ndarray]:
        """A ``(frame_index, frame) -> labels`` function that asks ``teacher_fn`` only on a miss."""

        def cached(frame_index: int, frame: np.ndarray) -> np.ndarray:
            return self.get_or_compute(key, frame_index, lambda i: teacher_fn(i, frame))

        return cached
