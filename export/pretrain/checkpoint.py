"""The two files a run writes after every epoch, atomically: the student and its resume state.

``OUT`` is the student (usable at once by ``jitnet export --init OUT``);
``OUT.resume`` holds the optimizer, the shuffle state and the history, so the
same command run again after a kill goes on after the last finished epoch
with the weights it would have had.  A file is written to a hidden sibling,
flushed and renamed into place: a kill at any moment leaves the previous
epoch's file or the new one, never a truncated one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from core.config import DistillConfig
from export.pretrain.loop import EpochRecord, TrainingState

if TYPE_CHECKING:
    from export.jitnet import JITNet

log = logging.getLogger(__name__)


class ResumeMismatch(ValueError):
    """The resume file beside OUT is from a run with another recipe; the message says how to go on."""


def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def _atomic_save(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_student_checkpoint(model: "JITNet", path: Path, *, classes: Sequence[str], history: Sequence[EpochRecord],
                            size: tuple[int, int], config: DistillConfig, images: int, sources: Sequence[dict],
                            recipe: dict) -> None:
    """The student with what it was trained on (``export.jitnet.save_student``'s format), atomically."""
    from export.jitnet import save_student

    _atomic_save(path, lambda f: save_student(
        model, f,
        classes=list(classes),
        epochs=history[-1].epoch,
        images=images,
        size=list(size),
        sources=list(sources),
        source=", ".join(s.get("spec", s.get("path", "")) for s in sources),
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        recipe=dict(recipe),
        history=[asdict(r) for r in history],
    ))


def save_resume(out: Path, recipe: dict, state: TrainingState) -> None:
    """``OUT.resume``: the state after an epoch and the recipe it belongs to."""
    import torch

    blob = {"recipe": recipe, "model": state.model_state, "optimizer": state.optimizer_state,
            "shuffle": state.shuffle_state, "history": [asdict(r) for r in state.history],
            "wall_seconds": state.wall_seconds}
    _atomic_save(resume_path(out), lambda f: torch.save(blob, f))


def load_resume(out: Path, recipe: dict) -> Optional[TrainingState]:
    """The state ``OUT.resume`` holds; None when there is none or it cannot be read (the run starts over).

    Raises :class:`ResumeMismatch` when it is from a run with another recipe: going on
    with other data or other settings would quietly mix two runs.
    """
    import torch

    path = resume_path(out)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a resume file is ours; unreadable means start over
        log.warning("cannot read %s (%s); starting over", path, exc)
        return None
    if blob.get("recipe") != recipe:
        raise ResumeMismatch(f"{path} is from a run with another recipe ({_diff(blob.get('recipe') or {}, recipe)}); "
                             "rerun with the same options to resume it, or pass --fresh to start over")
    return TrainingState(blob["model"], blob["optimizer"], blob["shuffle"],
                         [EpochRecord(**r) for r in blob["history"]], blob["wall_seconds"])


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]) or "unknown"


@dataclass
class RunFiles:
    """The files of one run: both written after every epoch, the resume file removed when the run is done."""

    out: Path
    recipe: dict  # what must match for a rerun to resume (the resume file keeps it)
    classes: Sequence[str]
    size: tuple[int, int]
    config: DistillConfig
    images: int
    sources: Sequence[dict]
    command: str
    saved_epoch: Optional[int] = None

    def after_epoch(self, model: "JITNet", state: TrainingState) -> None:
        """Resume state first, then the student: a kill between the two resumes from the newer epoch."""
        save_resume(self.out, self.recipe, state)
        self.save_student(model, state)
        log.info("checkpoint after epoch %d: %s and %s", state.history[-1].epoch, self.out, resume_path(self.out))

    def save_student(self, model: "JITNet", state: TrainingState) -> None:
        save_student_checkpoint(model, self.out, classes=self.classes, history=state.history, size=self.size,
                                config=self.config, images=self.images, sources=self.sources,
                                recipe=dict(self.recipe, command=self.command))
        self.saved_epoch = state.history[-1].epoch

    def finish(self, model: "JITNet", state: TrainingState) -> None:
        """The student as the run ends, also when no epoch ran in this process (--epochs 0, or all were done)."""
        if self.saved_epoch != state.history[-1].epoch or not self.out.is_file():
            self.save_student(model, state)

    def discard_resume(self) -> None:
        """After the card: a finished run leaves the student and its card, nothing to resume."""
        resume_path(self.out).unlink(missing_ok=True)
