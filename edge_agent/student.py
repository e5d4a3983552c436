"""What every student backend shares: the trainer interface, input checks, snapshots.

The ORT and torch backends both build on this module, and neither imports the
other, so the device side stays acyclic.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from core.geometry import check_frame
from core.manifest import ArtifactError, Manifest
from edge_agent.state import SnapshotStore

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    loss: float
    #: (classes, H, W) logits of the forward pass the step trained on, i.e.
    #: of the weights *before* this step's update.
    logits: np.ndarray

    def prediction(self) -> np.ndarray:
        return self.logits.argmax(0).astype(np.uint8)


class Trainer(Protocol):
    manifest: Manifest
    backend: str
    device: str
    steps: int

    @property
    def version(self) -> int: ...
    def predict(self, image: np.ndarray) -> np.ndarray: ...
    def predict_logits(self, image: np.ndarray) -> np.ndarray: ...
    def prepare(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> TrainBatch: ...
    def step(self, batch: TrainBatch) -> StepResult: ...
    def train_step(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> StepResult: ...
    def save(self, state_dir: Path | str) -> Path: ...
    def stage(self, state_dir: Path | str) -> "tuple[Path, dict]": ...
    def restore(self, state_dir: Path | str) -> bool: ...


def check_image(image: np.ndarray, stride: int = 32) -> None:
    """The trainer takes the student's grid only: the one frame check (nothing converted), then the stride."""
    check_frame(image, convert=False)
    h, w = image.shape[:2]
    if h == 0 or w == 0 or h % stride or w % stride:
        raise ValueError(
            f"image is {h}x{w}; height and width must be positive multiples of {stride} "
            "(JITNet's total stride): pad or crop it, e.g. with core.geometry.Geometry"
        )


def check_targets(image: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_classes: int) -> None:
    hw = image.shape[:2]
    if labels.shape != hw:
        raise ValueError(f"labels have shape {labels.shape}, expected {hw} to match the image")
    if weights.shape != hw:
        raise ValueError(f"pixel_weights have shape {weights.shape}, expected {hw} to match the image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
    if not np.all(np.isfinite(weights)) or float(weights.min()) < 0:
        raise ValueError("pixel_weights must be finite and >= 0")


def to_nchw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


@dataclass(frozen=True)
class TrainBatch:
    """One lesson in the trainers' own layout, validated once: up to u_max steps reuse it."""

    x: np.ndarray        # float32 (1, 3, H, W)
    labels: np.ndarray   # int64 (1, H, W)
    weights: np.ndarray  # float32 (1, H, W)

    @classmethod
    def of(cls, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray, manifest: Manifest) -> "TrainBatch":
        check_image(image, manifest.stride)
        check_targets(image, labels, pixel_weights, manifest.num_classes)
        return cls(
            to_nchw(image),
            np.ascontiguousarray(labels[None], dtype=np.int64),
            np.ascontiguousarray(pixel_weights[None], dtype=np.float32),
        )


def save_snapshot(trainer: Trainer, state_dir: Path | str, write) -> Path:
    """Publish a snapshot written by ``write(folder)``, stamped with what student it holds."""
    return SnapshotStore(state_dir).save(write, _meta(trainer))


def stage_snapshot(trainer: Trainer, state_dir: Path | str, write) -> "tuple[Path, dict]":
    """Copy the state now (``write(folder)``); :class:`SnapshotWriter` publishes it later."""
    return SnapshotStore(state_dir).stage(write), _meta(trainer)


def _meta(trainer: Trainer) -> dict:
    return {"backend": trainer.backend, "steps": trainer.steps, **_identity(trainer.manifest)}


class SnapshotWriter:
    """Snapshots written by one background thread from a copy, so the frame thread pays only the copy.

    ``save`` copies the trainer's state into a staging folder on the calling
    thread (where the trainer is used, so the copy is consistent) and queues
    the checksums, fsyncs and atomic publish; ``flush`` waits for them.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(1, thread_name_prefix="snapshot-writer")
        self._pending: list = []

    def save(self, trainer: Trainer, state_dir: Path | str):
        """A Future of the published snapshot's path (its exception if publishing failed)."""
        staged, meta = trainer.stage(state_dir)
        future = self._executor.submit(SnapshotStore(state_dir).publish, staged, meta)
        self._pending = [f for f in self._pending if not f.done()] + [future]
        return future

    def busy(self) -> bool:
        return any(not f.done() for f in self._pending)

    def flush(self) -> None:
        """Wait for every queued snapshot; a failed one is logged, not raised (the next save retries)."""
        for future in self._pending:
            try:
                future.result()
            except Exception as exc:
                log.warning("a background snapshot failed: %s", exc)
        self._pending = []

    def close(self) -> None:
        self.flush()
        self._executor.shutdown(wait=True)


def restore_snapshot(trainer: Trainer, state_dir: Path | str, load) -> bool:
    """``load(folder)`` the newest snapshot of this student that loads (older ones are the fallback), and its step count.

    ``load`` is all or nothing: it leaves the trainer as it was when it raises. Another student's state is
    refused (ArtifactError), never silently skipped. False when there is no snapshot.
    """
    def checked(folder: Path, record: dict) -> None:
        try:
            _check_identity(record, trainer.manifest, trainer.backend, folder)
        except ArtifactError as exc:
            raise WrongStudent(str(exc)) from None
        load(folder)
        trainer.steps = int(record.get("steps", 0))

    found = SnapshotStore(state_dir).restore(checked, fatal=(WrongStudent,))
    if found is None:
        return False
    log.info("restored student state from %s (step %d)", found[0], trainer.steps)
    return True


class WrongStudent(ArtifactError):
    """The state directory holds another student's state: an error, not something to fall back from."""


def _identity(manifest: Manifest) -> dict:
    return {"class_names": manifest.class_names, "width": manifest.width}


def _check_identity(record: dict, manifest: Manifest, backend: str, folder: Path) -> None:
    if record.get("backend") != backend:
        raise ArtifactError(f"{folder} was saved by the {record.get('backend')} backend, not {backend}")
    if record.get("class_names") != manifest.class_names or record.get("width") != manifest.width:
        raise ArtifactError(
            f"{folder} holds a student for classes {record.get('class_names')} at width {record.get('width')}, "
            f"but the artifacts are for {manifest.class_names} at width {manifest.width}; use another --state dir"
        )
