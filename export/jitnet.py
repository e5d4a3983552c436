"""JITNet, the student of online distillation, in PyTorch.

Architecture of Mullapudi et al. (ICCV 2019), Section 4 / Figure 3: a stem of
two stride-2 3x3 convolutions, three stride-2 ResNet encoder blocks whose
second 3x3 convolution is factorised into 1x3 then 3x1, three decoder blocks
fed by skip connections, two 3x3 convolutions at half resolution and per-pixel
logits at full resolution.  Total stride 32: H and W must be multiples of 32.

Every op used here has a gradient kernel in ONNX Runtime training on CPU:
upsampling is an exact 2x bilinear built from slices and pads (no Resize), there is no
ConvTranspose, and normalisation always uses batch statistics (ORT training
never updates BatchNorm running statistics, onnxruntime#19370).  This module
imports nothing from the rest of the project.
"""
from __future__ import annotations

import contextlib
import os
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from core.geometry import STRIDE  # JITNet's total stride: one definition, in core

# Inputs are RGB float 0..255 in NCHW; normalisation is part of the graph so
# that every runtime feeds raw pixels the same way.
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Exact ``F.interpolate(scale_factor=2, mode="bilinear", align_corners=False)``.

    Built from slice/sub/pad/concat/reshape because ORT has no Resize
    gradient on CPU.  Output pixel 2i is 0.75*x[i] + 0.25*x[i-1], 2i+1 is
    0.75*x[i] + 0.25*x[i+1], with edges clamped.
    """
    # Width first: interleaving along the last axis is the costly step (an
    # element-wise shuffle, and its gradient a strided split), so it runs on
    # the tensor before the height doubles it.
    if _RESIZE_UPSAMPLING.get():
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    x = _upsample_axis(x, 3)
    return _upsample_axis(x, 2)


_RESIZE_UPSAMPLING: contextvars.ContextVar[bool] = contextvars.ContextVar("resize_upsampling", default=False)


@contextlib.contextmanager
def resize_upsampling() -> Iterator[None]:
    """Within this block upsample2x is ``F.interpolate`` (ONNX Resize): for graphs
    that are never differentiated, where one Resize beats a dozen elementwise ops."""
    token = _RESIZE_UPSAMPLING.set(True)
    try:
        yield
    finally:
        _RESIZE_UPSAMPLING.reset(token)


def _upsample_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    # With q[i] = (x[i+1] - x[i]) / 4: even[i] = x[i] - q[i-1] and
    # odd[i] = x[i] + q[i], where the missing q at either edge is 0 (the
    # clamped neighbour equals x itself).  One difference tensor and two
    # constant pads need about half the ops and memory passes of building
    # shifted copies, forward and backward (see docs/performance.md).
    n = x.shape[dim]
    q = 0.25 * (x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1))
    before, after = ((1, 0), (0, 1)) if dim == 3 else ((0, 0, 1, 0), (0, 0, 0, 1))
    even = x - F.pad(q, before)
    odd = x + F.pad(q, after)
    return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)


def norm(channels: int) -> nn.BatchNorm2d:
    # track_running_stats=False: batch statistics in training and inference
    # alike, so an online-trained student never depends on stale statistics.
    return nn.BatchNorm2d(channels, track_running_stats=False)


class ConvNormReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: int = 1, relu: bool = True):
        pad = (kernel[0] // 2, kernel[1] // 2)
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, pad, bias=False), norm(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """ResNet basic block with the second 3x3 factorised into 1x3 then 3x1."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = ConvNormReLU(cin, cout, (3, 3), stride)
        self.conv2a = ConvNormReLU(cout, cout, (1, 3))
        self.conv2b = ConvNormReLU(cout, cout, (3, 1), relu=False)
        self.shortcut = (
            ConvNormReLU(cin, cout, (1, 1), stride, relu=False) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2b(self.conv2a(self.conv1(x))) + self.shortcut(x))


class DecoderBlock(nn.Module):
    """Upsample 2x, concatenate the encoder skip, one residual block."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.block = ResBlock(cin + cskip, cout, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([upsample2x(x), skip], dim=1))


@dataclass(frozen=True)
class JITNetSpec:
    """What determines the network: width multiplier and number of classes."""

    width: float = 1.0
    num_classes: int = 2

    def channels(self, base: int) -> int:
        return max(8, int(round(base * self.width)))


class JITNet(nn.Module):
    """Input: N x 3 x H x W RGB floats in 0..255; output: N x classes x H x W logits."""

    def __init__(self, spec: JITNetSpec = JITNetSpec()):
        super().__init__()
        if spec.num_classes < 2:
            raise ValueError("JITNet needs at least 2 classes (background + one)")
        self.spec = spec
        c = spec.channels
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(INPUT_STD).view(1, 3, 1, 1) * 255.0), persistent=False)
        self.stem1 = ConvNormReLU(3, c(16), (3, 3), 2)  # H/2
        self.stem2 = ConvNormReLU(c(16), c(64), (3, 3), 2)  # H/4
        self.enc1 = ResBlock(c(64), c(128), 2)  # H/8
        self.enc2 = ResBlock(c(128), c(128), 2)  # H/16
        self.enc3 = ResBlock(c(128), c(256), 2)  # H/32
        self.dec1 = DecoderBlock(c(256), c(128), c(256))  # H/16, skip enc2
        self.dec2 = DecoderBlock(c(256), c(128), c(128))  # H/8, skip enc1
        self.dec3 = DecoderBlock(c(128), c(64), c(64))  # H/4, skip stem2
        self.head1 = ConvNormReLU(c(64) + c(16), c(32), (3, 3))  # H/2, skip stem1
        self.head2 = ConvNormReLU(c(32), c(32), (3, 3))
        # The 1x1 logits conv commutes with bilinear upsampling, so it runs at
        # half resolution and only num_classes channels are upsampled.
        self.logits = nn.Conv2d(c(32), spec.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.inv_std
        s1 = self.stem1(x)
        s2 = self.stem2(s1)
        e1 = self.enc1(s2)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d = self.dec1(e3, e2)
        d = self.dec2(d, e1)
        d = self.dec3(d, s2)
        h = self.head1(torch.cat([upsample2x(d), s1], dim=1))
        h = self.head2(h)
        return upsample2x(self.logits(h))


def build_jitnet(width: float = 1.0, num_classes: int = 2, seed: int | None = 0) -> JITNet:
    """A freshly initialised JITNet; ``seed`` makes the initial weights reproducible."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return JITNet(JITNetSpec(width, num_classes))
    return JITNet(JITNetSpec(width, num_classes))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


BACKGROUND = "background"
CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A student checkpoint cannot be used; the message is one line naming the file and what to do."""


def _group_key(name: str) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())


def save_student(model: JITNet, path: "str | os.PathLike[str]", *, classes: "list[str] | None" = None,
                 **extra: object) -> None:
    """A pre-trained student that `jitnet export --init`, the SDK and the torch backend start from.

    The head is stored per class group (``head[name] = {"weight", "bias"}``, background
    included), so a student trained for person, auto, bike, animal can later be
    exported for any subset of them, or for groups it never saw (a fresh channel).
    """
    names = list(classes) if classes is not None else [f"class{k}" for k in range(1, model.spec.num_classes)]
    if len(names) + 1 != model.spec.num_classes:
        raise ValueError(f"{len(names)} class names for a student with {model.spec.num_classes - 1} classes")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weight, bias = state["logits.weight"], state["logits.bias"]
    head = {name: {"weight": weight[k].clone(), "bias": bias[k].clone()}
            for k, name in enumerate([BACKGROUND, *names])}
    body = {k: v for k, v in state.items() if not k.startswith("logits.")}
    torch.save({"format": CHECKPOINT_FORMAT, "width": model.spec.width, "num_classes": model.spec.num_classes,
                "classes": names, "body": body, "head": head, **extra}, path)


def read_checkpoint(path: "str | os.PathLike[str]") -> dict:
    """The checkpoint's contents, or a one-line :class:`CheckpointError` saying what is wrong and what to do."""
    what = "pass --init PATH to a file written by `jitnet pretrain`, --init default for the shipped student or --init none"
    if not os.path.isfile(path):
        raise CheckpointError(f"student checkpoint {path} does not exist; {what}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and EOF errors all mean the same thing here
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"student checkpoint {path} is corrupt or not a torch file ({reason}); "
                              f"re-download or re-run `jitnet pretrain`, or {what}") from None
    if not isinstance(blob, dict) or "width" not in blob or not ("state_dict" in blob or "body" in blob):
        raise CheckpointError(f"{path} is not a JITNet student checkpoint (no width/weights); {what}")
    if "body" not in blob:  # format 1: one state dict, head in class order
        sd = blob["state_dict"]
        names = list(blob.get("classes") or [f"class{k}" for k in range(1, int(blob["num_classes"]))])
        blob = dict(blob, body={k: v for k, v in sd.items() if not k.startswith("logits.")},
                    head={n: {"weight": sd["logits.weight"][k], "bias": sd["logits.bias"][k]}
                          for k, n in enumerate([BACKGROUND, *names])}, classes=names)
    return blob


@dataclass(frozen=True)
class StudentStart:
    """Which head channels came from the checkpoint and which are fresh."""

    path: str
    classes: tuple[str, ...]
    trained: tuple[str, ...]
    fresh: tuple[str, ...]


def load_student(path: "str | os.PathLike[str]", *, width: float | None = None, num_classes: int | None = None,
                 classes: "list[str] | None" = None, seed: int = 0) -> JITNet:
    """Load a student saved by :func:`save_student`.

    With ``classes`` the head is rebuilt for exactly those groups (background
    first): channels of groups the checkpoint knows are its trained ones, any
    other group gets a fresh channel (seeded, logged).  Without, the student
    comes back with the checkpoint's own classes.
    """
    return load_student_start(path, width=width, num_classes=num_classes, classes=classes, seed=seed)[0]


def load_student_start(path: "str | os.PathLike[str]", *, width: float | None = None, num_classes: int | None = None,
                       classes: "list[str] | None" = None, seed: int = 0) -> "tuple[JITNet, StudentStart]":
    """:func:`load_student`, plus which head channels are trained and which fresh."""
    import logging

    blob = read_checkpoint(path)
    saved = list(blob["classes"])
    if width is not None and abs(float(blob["width"]) - width) > 1e-9:
        raise CheckpointError(f"{path} holds a width-{blob['width']:g} student, not width {width:g}; "
                              f"pass --width {blob['width']:g} or another --init")
    want = saved if classes is None else list(classes)
    if num_classes is not None and len(want) + 1 != num_classes:
        raise CheckpointError(f"{path} has {len(want) + 1} classes, not {num_classes}")
    head = {_group_key(k): v for k, v in blob["head"].items()}
    model = build_jitnet(float(blob["width"]), len(want) + 1, seed=seed)
    state = model.state_dict()
    try:
        missing = [k for k in state if not k.startswith("logits.") and k not in blob["body"]]
        if missing:
            raise KeyError(missing[0])
        body = {k: blob["body"][k] for k in state if not k.startswith("logits.")}
        weight, bias = state["logits.weight"].clone(), state["logits.bias"].clone()
        trained, fresh = [], []
        for k, name in enumerate([BACKGROUND, *want]):
            entry = head.get(_group_key(name))
            if entry is None:
                fresh.append(name)
                continue
            weight[k], bias[k] = entry["weight"], entry["bias"]
            if k:
                trained.append(name)
        model.load_state_dict({**body, "logits.weight": weight, "logits.bias": bias})
    except (KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:120]
        raise CheckpointError(f"{path} does not fit a width-{blob['width']:g} JITNet ({reason}); "
                              "re-run `jitnet pretrain` or pass another --init") from None
    if fresh:
        logging.getLogger(__name__).warning(
            "%s has no trained head for %s (it knows %s): fresh channel(s), learned online", path,
            ", ".join(fresh), ", ".join(saved))
    return model, StudentStart(str(path), tuple(want), tuple(trained), tuple(fresh))
