"""The pre-training loop: SGD with momentum on the online update's loss, validated after every epoch.

Learning rate and momentum come from the run's :class:`~core.config.DistillConfig`
(the online update's), as do the box weight and dilation.  After each epoch
the loop hands ``on_epoch`` a :class:`TrainingState`: everything a killed run
needs to go on exactly where it stopped (the checkpoint module writes it).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from core.config import DistillConfig
from core.metrics import mean_iou
from export.augment import Augmentation
from export.datasets import Source
from export.pretrain.splits import Splits
from export.pretrain.views import ViewSet

if TYPE_CHECKING:  # torch is imported where it is used: `jitnet --help` stays light
    from export.jitnet import JITNet

log = logging.getLogger(__name__)

LOSS = "per-pixel cross-entropy x box weights (5x in dilated boxes), 0 on unlabelled pixels"


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 0 = before any training
    train_loss: float  # mean over the epoch's batches (NaN for epoch 0)
    val_loss: float  # weighted CE on the held-out views (NaN without a held-out slice)
    val_miou: float  # mean over held-out images of core.metrics.mean_iou
    seconds: float
    #: validation set -> group -> IoU over all its images (intersection and union summed), None if absent
    val_group_iou: dict = field(default_factory=dict)
    lr: float = float("nan")


@dataclass
class TrainingState:
    """Where a run stands after an epoch: what the resume file holds."""

    model_state: dict
    optimizer_state: dict
    shuffle_state: object  # the torch.Generator state that orders the next epoch's batches
    history: list[EpochRecord]
    wall_seconds: float  # training time so far, summed over every process that worked on this run


def weighted_loss(logits, labels, weights):
    """The online update's loss: per-pixel cross-entropy times the box weights, averaged."""
    import torch.nn.functional as F

    return (F.cross_entropy(logits, labels, reduction="none") * weights).mean()


def evaluate(model: "JITNet", views: ViewSet, num_classes: int, device: str) -> tuple[float, float, np.ndarray]:
    """(weighted loss, mean IoU, per-class IoU summed over images) over held-out views, one image per forward."""
    import torch

    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    if len(views) == 0:
        return float("nan"), float("nan"), inter * np.nan
    model.eval()
    losses, ious = [], []
    with torch.no_grad():
        for i in range(len(views)):
            view = views[i]
            x, y, w = to_tensors([view], device)
            logits = model(x)
            losses.append(float(weighted_loss(logits, y, w)))
            pred = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
            ref, valid = view[1], view[2] > 0
            ious.append(mean_iou(np.where(valid, pred, ref), ref, num_classes))
            for k in range(num_classes):
                p, r = (pred == k) & valid, (ref == k) & valid
                inter[k] += np.count_nonzero(p & r)
                union[k] += np.count_nonzero(p | r)
    model.train()
    with np.errstate(invalid="ignore", divide="ignore"):
        group = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.mean(losses)), float(np.mean(ious)), group


def to_tensors(batch, device: str):
    """A list of numpy (image, labels, weights) views as NCHW float, NHW int64 and NHW float tensors."""
    import torch

    images = np.stack([b[0] for b in batch])
    labels = np.stack([b[1] for b in batch])
    weights = np.stack([b[2] for b in batch])
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    w = torch.from_numpy(weights.astype(np.float32)).to(device)
    return x, y, w


def _collate(batch):
    return batch  # numpy stays numpy until to_tensors


def learning_rate(base: float, schedule: str, step: int, total: int) -> float:
    """The rate of SGD step ``step`` of ``total``: ``constant`` or ``cosine`` (to 0 at the last step)."""
    if schedule == "constant" or total <= 0:
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    raise ValueError(f"unknown schedule {schedule!r}; use constant or cosine")


def pretrain(
    *,
    sources: Sequence[Source],
    splits: Splits,
    classes: Sequence[str],
    width: float = 0.5,
    size: tuple[int, int] = (384, 640),
    epochs: int = 10,
    batch: int = 8,
    config: DistillConfig = DistillConfig(),
    init: Optional["JITNet"] = None,
    workers: int = 0,
    device: str = "cpu",
    seed: int = 0,
    augmentation: Optional[Augmentation] = None,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    resume: Optional[TrainingState] = None,
    progress: bool = False,
    on_epoch: Optional[Callable[["JITNet", TrainingState], None]] = None,
) -> tuple["JITNet", TrainingState]:
    """Train a JITNet on ``splits.train`` of ``sources``; the model and the state after the last epoch.

    The state's history has one record per epoch plus epoch 0 (before any
    training).  With ``resume``, training goes on after its last epoch with
    its weights, optimizer and shuffle order, as if never interrupted.
    """
    import torch
    from torch.utils.data import DataLoader

    from export.jitnet import build_jitnet

    if epochs < 0 or batch < 1:
        raise ValueError(f"need epochs >= 0 and batch >= 1, got {epochs} and {batch}")
    num_classes = len(classes) + 1
    model = init if init is not None else build_jitnet(width, num_classes, seed=seed)
    if model.spec.num_classes != num_classes:
        raise ValueError(f"the initial student has {model.spec.num_classes} classes, the run {num_classes}")
    model = model.to(device).train()
    train_set = ViewSet(sources, splits.train, size, train=True, config=config, seed=seed, augmentation=augmentation)
    val_sets = {name: ViewSet(sources, items, size, train=False, config=config, seed=seed)
                for name, items in splits.val.items()}
    log.info("pre-training width-%g JITNet (%s) at %dx%d on %d images, held out %s, %s", model.spec.width,
             ", ".join(classes), size[0], size[1], len(train_set),
             ", ".join(f"{n}: {len(v)}" for n, v in val_sets.items()) or "none", device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                weight_decay=weight_decay)
    shuffle = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_set) / batch)

    def validate() -> tuple[float, float, dict]:
        total_n = sum(len(v) for v in val_sets.values())
        if not total_n:
            return float("nan"), float("nan"), {}
        loss = miou = 0.0
        groups = {}
        for name, views in val_sets.items():
            l, m, g = evaluate(model, views, num_classes, device)
            loss, miou = loss + l * len(views), miou + m * len(views)
            groups[name] = {c: (None if math.isnan(g[k]) else round(float(g[k]), 4))
                            for k, c in enumerate(classes, start=1)}
        return loss / total_n, miou / total_n, groups

    wall0 = time.perf_counter()
    previous_wall = 0.0
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        shuffle.set_state(resume.shuffle_state)
        history = list(resume.history)
        previous_wall = resume.wall_seconds
        log.info("resuming after epoch %d of %d", history[-1].epoch, epochs)
    else:
        start = time.perf_counter()
        val_loss, val_miou, groups = validate()
        history = [EpochRecord(0, float("nan"), val_loss, val_miou, time.perf_counter() - start, groups)]
        log.info("epoch 0: held-out loss %.4f, mean IoU %.3f", val_loss, val_miou)

    def state() -> TrainingState:
        return TrainingState(model.state_dict(), optimizer.state_dict(), shuffle.get_state(), list(history),
                             previous_wall + time.perf_counter() - wall0)

    bar = None
    if progress:
        from tqdm import tqdm

        done = history[-1].epoch
        bar = tqdm(total=max(0, epochs - done) * steps_per_epoch, unit="step", dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 15.0)
    for epoch in range(history[-1].epoch + 1, epochs + 1):
        start = time.perf_counter()
        train_set.epoch = epoch
        loader = DataLoader(train_set, batch_size=batch, shuffle=True, generator=shuffle, num_workers=workers,
                            collate_fn=_collate, drop_last=False)
        total, steps = 0.0, 0
        lr = config.learning_rate
        for views in loader:
            lr = learning_rate(config.learning_rate, schedule, (epoch - 1) * steps_per_epoch + steps,
                               epochs * steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y, w = to_tensors(views, device)
            optimizer.zero_grad(set_to_none=True)
            loss = weighted_loss(model(x), y, w)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} in epoch {epoch}; lower --lr")
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            if bar is not None:
                bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
                bar.set_postfix_str(f"loss {total / steps:.4f} val mIoU {history[-1].val_miou:.3f}", refresh=False)
                bar.update(1)
        val_loss, val_miou, groups = validate()
        history.append(EpochRecord(epoch, total / max(steps, 1), val_loss, val_miou, time.perf_counter() - start,
                                   groups, lr))
        log.info("epoch %d/%d: train loss %.4f, held-out loss %.4f, mean IoU %.3f (%.1f s)", epoch, epochs,
                 history[-1].train_loss, val_loss, val_miou, history[-1].seconds)
        if bar is not None:
            bar.set_postfix_str(f"loss {history[-1].train_loss:.4f} val mIoU {val_miou:.3f}")
        if on_epoch is not None:
            on_epoch(model, state())
    if bar is not None:
        bar.close()
    return model, state()
