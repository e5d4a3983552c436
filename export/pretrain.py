"""`jitnet pretrain`: train the student offline on a COCO-format dataset.

The paper starts online distillation from a JITNet pre-trained on COCO: the
student then only has to specialise to its camera, not learn what a person
looks like from scratch.  This is that offline step.  It uses the online
update's loss (per-pixel cross-entropy, 5x weight inside dilated object
boxes) and optimizer (SGD with momentum), on random scale/crop/flip views
of a fixed size, and writes a checkpoint that `jitnet export --init` and
the torch backend start from.

JITNet normalises with batch statistics, so batches larger than one are
fine here even though the device trains and predicts on one frame at a time.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import cv2
import numpy as np

from core.config import DistillConfig
from core.geometry import STRIDE
from core.metrics import mean_iou
from core.targets import box_weights

if TYPE_CHECKING:  # torch is imported where it is used: `jitnet --help` stays light
    from export.coco import CocoDataset
    from export.jitnet import JITNet

log = logging.getLogger(__name__)

#: Random views are scaled by this factor range relative to the scale at
#: which the image just covers the training size (below 1: padded, weight 0).
SCALE_RANGE = (0.75, 1.5)


def parse_size(text: str) -> tuple[int, int]:
    """``"384x640"`` -> (384, 640), both multiples of 32 (JITNet's total stride)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 384x640, got {text!r}") from None
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise ValueError(f"size {h}x{w}: height and width must be positive multiples of {STRIDE}")
    return h, w


# --------------------------------------------------------------------------
# Views: what one training example looks like
# --------------------------------------------------------------------------

def random_view(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    scale_range: tuple[float, float] = SCALE_RANGE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random scale, crop and horizontal flip to exactly ``size``.

    Where a zoomed-out view is smaller than ``size`` it is edge-padded, with
    background labels and weight 0 (as the agent pads frames), so padding
    never trains.
    """
    cover = max(size[0] / image.shape[0], size[1] / image.shape[1])
    scale = cover * float(rng.uniform(*scale_range))
    image, labels, weights = _rescale(image, labels, weights, scale)
    image, labels, weights = _pad_to(image, labels, weights, size, rng)
    h, w = image.shape[:2]
    y0 = int(rng.integers(0, h - size[0] + 1))
    x0 = int(rng.integers(0, w - size[1] + 1))
    crop = (slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
    image, labels, weights = image[crop], labels[crop], weights[crop]
    if rng.random() < 0.5:
        image, labels, weights = image[:, ::-1], labels[:, ::-1], weights[:, ::-1]
    return tuple(np.ascontiguousarray(a) for a in (image, labels, weights))  # type: ignore[return-value]


def center_view(
    image: np.ndarray, labels: np.ndarray, weights: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic view used for held-out evaluation: scale to cover, crop the centre."""
    scale = max(size[0] / image.shape[0], size[1] / image.shape[1])
    image, labels, weights = _rescale(image, labels, weights, scale)
    h, w = image.shape[:2]
    y0, x0 = (h - size[0]) // 2, (w - size[1]) // 2
    crop = (slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
    return tuple(np.ascontiguousarray(a[crop]) for a in (image, labels, weights))  # type: ignore[return-value]


def _rescale(image, labels, weights, scale: float):
    h, w = image.shape[:2]
    nh, nw = max(1, int(math.ceil(h * scale - 1e-6))), max(1, int(math.ceil(w * scale - 1e-6)))
    if (nh, nw) == (h, w):
        return image, labels, weights
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return (
        cv2.resize(image, (nw, nh), interpolation=interp),
        cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST),
        cv2.resize(weights, (nw, nh), interpolation=cv2.INTER_NEAREST),
    )


def _pad_to(image, labels, weights, size, rng):
    h, w = image.shape[:2]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if not ph and not pw:
        return image, labels, weights
    top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
    pads = (top, ph - top, left, pw - left)
    return (
        cv2.copyMakeBorder(image, *pads, cv2.BORDER_REPLICATE),
        cv2.copyMakeBorder(labels, *pads, cv2.BORDER_CONSTANT, value=0),
        cv2.copyMakeBorder(weights, *pads, cv2.BORDER_CONSTANT, value=0),
    )


class ViewSet:
    """Map-style dataset of (image, labels, weights) views of COCO images.

    The random view of item ``i`` in epoch ``e`` depends only on
    (seed, e, i), so runs are reproducible whatever the number of loader
    workers.
    """

    def __init__(self, coco: "CocoDataset", indices: Sequence[int], size: tuple[int, int], *,
                 train: bool, config: DistillConfig = DistillConfig(), seed: int = 0):
        self.coco, self.indices, self.size = coco, list(indices), size
        self.train, self.config, self.seed = train, config, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = self.coco[self.indices[i]]
        weights = box_weights(sample.labels.shape, sample.boxes, weight=self.config.box_weight,
                              dilation=self.config.box_dilation)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            return random_view(sample.image, sample.labels, weights, self.size, rng)
        return center_view(sample.image, sample.labels, weights, self.size)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 0 = before any training
    train_loss: float  # mean over the epoch's batches (NaN for epoch 0)
    val_loss: float  # weighted CE on the held-out views (NaN without a held-out slice)
    val_miou: float  # mean over held-out images of core.metrics.mean_iou
    seconds: float


def split_indices(n: int, val_images: Optional[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held-out) image indices; a seeded shuffle, so the split is reproducible."""
    if val_images is None:
        val_images = max(1, min(200, n // 20)) if n >= 2 else 0
    if val_images < 0 or val_images >= n:
        raise ValueError(f"cannot hold out {val_images} of {n} images; at least one must be left to train on")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[val_images:]), sorted(order[:val_images])


def weighted_loss(logits, labels, weights):
    """The online update's loss: per-pixel cross-entropy times the box weights, averaged."""
    import torch.nn.functional as F

    return (F.cross_entropy(logits, labels, reduction="none") * weights).mean()


def evaluate(model: "JITNet", views: ViewSet, num_classes: int, device: str) -> tuple[float, float]:
    """(weighted loss, mean IoU) over held-out views, one image per forward as on the device."""
    import torch

    if len(views) == 0:
        return float("nan"), float("nan")
    model.eval()
    losses, ious = [], []
    with torch.no_grad():
        for i in range(len(views)):
            view = views[i]
            x, y, w = _to_tensors([view], device)
            logits = model(x)
            losses.append(float(weighted_loss(logits, y, w)))
            pred = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
            ious.append(mean_iou(pred, view[1], num_classes))
    model.train()
    return float(np.mean(losses)), float(np.mean(ious))


def _to_tensors(batch, device: str):
    import torch

    images = np.stack([b[0] for b in batch])
    labels = np.stack([b[1] for b in batch])
    weights = np.stack([b[2] for b in batch])
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    w = torch.from_numpy(weights.astype(np.float32)).to(device)
    return x, y, w


def _collate(batch):
    return batch  # numpy stays numpy until _to_tensors


def pretrain(
    coco: "CocoDataset",
    *,
    width: float = 0.5,
    size: tuple[int, int] = (384, 640),
    epochs: int = 10,
    batch: int = 8,
    config: DistillConfig = DistillConfig(),
    init: Optional["JITNet"] = None,
    val_images: Optional[int] = None,
    workers: int = 0,
    device: str = "cpu",
    seed: int = 0,
    on_epoch: Optional[Callable[["JITNet", list[EpochRecord]], None]] = None,
) -> tuple["JITNet", list[EpochRecord]]:
    """Train a JITNet on ``coco``; returns the model and one record per epoch (plus epoch 0).

    Learning rate and momentum come from ``config`` (the online update's), as
    do the box weight and dilation.  ``on_epoch`` runs after every epoch
    (the CLI saves a checkpoint there, so an interrupted run keeps its progress).
    """
    import torch
    from torch.utils.data import DataLoader

    from export.jitnet import build_jitnet

    if epochs < 0 or batch < 1:
        raise ValueError(f"need epochs >= 0 and batch >= 1, got {epochs} and {batch}")
    num_classes = coco.num_classes
    model = init if init is not None else build_jitnet(width, num_classes, seed=seed)
    if model.spec.num_classes != num_classes:
        raise ValueError(f"the initial student has {model.spec.num_classes} classes, the dataset {num_classes}")
    model = model.to(device).train()
    train_idx, val_idx = split_indices(len(coco), val_images, seed)
    train_set = ViewSet(coco, train_idx, size, train=True, config=config, seed=seed)
    val_set = ViewSet(coco, val_idx, size, train=False, config=config, seed=seed)
    log.info("pre-training width-%g JITNet (%d classes) at %dx%d on %d images, %d held out, %s",
             model.spec.width, num_classes, size[0], size[1], len(train_set), len(val_set), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
    shuffle = torch.Generator().manual_seed(seed)

    start = time.perf_counter()
    val_loss, val_miou = evaluate(model, val_set, num_classes, device)
    history = [EpochRecord(0, float("nan"), val_loss, val_miou, time.perf_counter() - start)]
    log.info("epoch 0: held-out loss %.4f, mean IoU %.3f", val_loss, val_miou)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_set.epoch = epoch  # workers are re-created every epoch and see it
        loader = DataLoader(train_set, batch_size=batch, shuffle=True, generator=shuffle, num_workers=workers,
                            collate_fn=_collate, drop_last=False)
        total, steps = 0.0, 0
        for views in loader:
            x, y, w = _to_tensors(views, device)
            optimizer.zero_grad(set_to_none=True)
            loss = weighted_loss(model(x), y, w)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} in epoch {epoch}; lower --lr")
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        val_loss, val_miou = evaluate(model, val_set, num_classes, device)
        history.append(EpochRecord(epoch, total / max(steps, 1), val_loss, val_miou, time.perf_counter() - start))
        log.info("epoch %d/%d: train loss %.4f, held-out loss %.4f, mean IoU %.3f (%.1f s)", epoch, epochs,
                 history[-1].train_loss, val_loss, val_miou, history[-1].seconds)
        if on_epoch is not None:
            on_epoch(model, history)
    return model, history


def save_checkpoint(model: "JITNet", path: Path, coco: "CocoDataset", history: list[EpochRecord],
                    size: tuple[int, int], config: DistillConfig) -> None:
    """Write atomically: an interrupted save never leaves a truncated checkpoint."""
    from export.jitnet import save_student

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_student(
        model, tmp,
        classes=list(coco.spec.names),
        epochs=history[-1].epoch,
        images=len(coco),
        size=list(size),
        source=str(coco.annotation_file),
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        history=[asdict(r) for r in history],
    )
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _check_init_classes(path: Path, classes: list[str]) -> None:
    """Label k must mean the same group before and after: refuse a student trained for other groups."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True).get("classes")
    if saved is not None and list(saved) != classes:
        raise ValueError(f"it was pre-trained for classes {list(saved)}, not {classes}; "
                         f"pass --classes {','.join(saved)} or start without --init")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DistillConfig()
    parser.add_argument("--coco", required=True, type=Path,
                        help="COCO-format dataset folder: annotations/instances_<split>.json + images")
    parser.add_argument("--annotations", type=Path, help="instances JSON to use instead of DIR/annotations/instances_*.json")
    parser.add_argument("--split", help="pick DIR/annotations/instances_<split>.json when there are several")
    parser.add_argument("--images", type=Path, help="image folder, when not DIR/<split>/ or DIR/images/")
    parser.add_argument("--classes", default="person", help="comma-separated class groups, e.g. person,auto")
    parser.add_argument("--width", type=float, default=0.5, help="width multiplier (1.0 = the paper's ~3M params)")
    parser.add_argument("--size", default="384x640", help="HxW of the training views (multiples of 32)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="views per SGD step")
    parser.add_argument("--lr", type=float, default=d.learning_rate)
    parser.add_argument("--momentum", type=float, default=d.momentum)
    parser.add_argument("--out", required=True, type=Path, help="checkpoint to write (for jitnet export --init)")
    parser.add_argument("--init", type=Path, help="continue from a pre-trained student")
    parser.add_argument("--max-images", type=int, help="use at most this many images (first by id)")
    parser.add_argument("--val-images", type=int, help="images held out for the per-epoch mean IoU (default 5%%, 1..200)")
    parser.add_argument("--include-empty", action="store_true", help="also train on images without any requested class")
    parser.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                        help="data loader processes (0 = load in the training process)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (on a busy CPU, 1 is often much faster than the default)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import torch

    from export.coco import CocoDataset, CocoLayoutError
    from export.jitnet import load_student
    from core.groups import GroupError

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        size = parse_size(args.size)
        config = DistillConfig(learning_rate=args.lr, momentum=args.momentum)
        coco = CocoDataset(args.coco, classes, annotations=args.annotations, images=args.images, split=args.split,
                           include_empty=args.include_empty, max_images=args.max_images)
    except (CocoLayoutError, GroupError, ValueError) as exc:
        raise SystemExit(f"jitnet pretrain: {exc}") from None
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        init = load_student(args.init, width=args.width, num_classes=coco.num_classes) if args.init else None
        if args.init:
            _check_init_classes(args.init, list(coco.spec.names))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"jitnet pretrain: cannot start from {args.init}: {exc}") from None

    def checkpoint(model, history):
        save_checkpoint(model, args.out, coco, history, size, config)

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, history = pretrain(coco, width=args.width, size=size, epochs=args.epochs, batch=args.batch,
                                  config=config, init=init, val_images=args.val_images, workers=args.workers,
                                  device=device, seed=args.seed, on_epoch=checkpoint)
    except ValueError as exc:
        raise SystemExit(f"jitnet pretrain: {exc}") from None
    finally:
        torch.set_num_threads(threads)  # run() may be called in a process that goes on
    if args.epochs == 0:
        checkpoint(model, history)
    first, last = history[0], history[-1]
    print(f"wrote {args.out}: {len(coco)} images, {last.epoch} epochs, held-out mean IoU "
          f"{first.val_miou:.3f} -> {last.val_miou:.3f}, loss {first.val_loss:.4f} -> {last.val_loss:.4f}; "
          f"next: jitnet export --init {args.out} --classes {','.join(classes)} --width {args.width:g} --out DIR")
    return 0
