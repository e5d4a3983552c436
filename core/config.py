"""The paper's knobs, in one place, with the paper's defaults.

Mullapudi et al., "Online Model Distillation for Efficient Video Inference"
(ICCV 2019), Algorithm 1 and Section 4.  Every other module reads its knobs
from here instead of growing flags of its own; the command line's options for
them are generated from this class (:func:`add_config_arguments`), so a knob
added here is a flag of `jitnet run`, `jitnet demo` and `jitnet eval` at once.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping, Optional, Sequence

STRIDE_SIGNALS = ("auto", "paper", "unseen", "change")
FUSIONS = ("none", "flow")


def _knob(default: Any, help: str, *, aliases: Sequence[str] = (), choices: Optional[Sequence[Any]] = None) -> Any:
    return field(default=default, metadata={"help": help, "aliases": tuple(aliases), "choices": choices})


@dataclass(frozen=True)
class DistillConfig:
    """Online distillation settings (defaults are the paper's)."""

    accuracy_threshold: float = _knob(
        0.8, "mean IoU against the teacher that ends training on a teacher frame (the paper: 0.7/0.8/0.9)",
        aliases=("--threshold",))
    min_stride: int = _knob(8, "fewest frames between teacher frames (delta_min)")
    max_stride: int = _knob(64, "most frames between teacher frames (delta_max)")
    max_updates: int = _knob(8, "at most this many gradient steps per teacher frame (u_max)")
    learning_rate: float = _knob(
        0.01, "SGD learning rate; baked into the artifacts by `jitnet export --lr` (a mismatch is an error)",
        aliases=("--lr",))
    momentum: float = _knob(0.9, "SGD momentum; baked into the artifacts by `jitnet export --momentum`")
    box_weight: float = _knob(5.0, "loss weight of pixels inside teacher boxes (1 elsewhere)")
    box_dilation: float = _knob(0.15, "teacher boxes grow by this fraction of their size before weighting")
    input_scale: float = _knob(
        1.0, "frames are resized by this factor for the student, then padded to a multiple of 32",
        aliases=("--scale",))
    score_threshold: float = _knob(0.5, "teacher detections below this score are ignored (sent with every request)")
    stride_signal: str = _knob(
        "auto", "what doubles or halves the stride: 'paper' = the student's accuracy after training on the "
        "teacher frame (Algorithm 1), 'unseen' = its accuracy on the new teacher frame before training on it, "
        "'change' = the fused output's accuracy on the new teacher frame before its answer, an empty teacher "
        "frame proving nothing, and a scene cut or the student disagreeing with the carried answer bringing "
        "the next teacher frame forward (needs fusion=flow); 'auto' = 'change' with fusion=flow (measured "
        "best: docs/fusion.md), 'paper' with fusion=none", choices=STRIDE_SIGNALS)
    stride_window: int = _knob(
        1, "with stride_signal=unseen: mean over this many most recent teacher frames decides")
    fusion: str = _knob(
        "flow", "each frame's output: 'flow' = the last teacher answer carried by optical flow where it is still "
        "consistent, the student elsewhere; 'none' = the student alone (the paper's tables)", choices=FUSIONS)
    fusion_max_age: int = _knob(
        64, "with fusion=flow: a teacher answer is carried at most this many frames (and late answers are "
        "replayed through at most this many flow steps)")

    def __post_init__(self) -> None:
        if not 0.0 < self.accuracy_threshold <= 1.0:
            raise ValueError(f"accuracy_threshold must be in (0, 1], got {self.accuracy_threshold}")
        if not 1 <= self.min_stride <= self.max_stride:
            raise ValueError(
                f"need 1 <= min_stride <= max_stride, got {self.min_stride} and {self.max_stride}"
            )
        if self.max_updates < 1:
            raise ValueError(f"max_updates must be >= 1, got {self.max_updates}")
        if self.learning_rate <= 0 or not 0 <= self.momentum < 1:
            raise ValueError("learning_rate must be > 0 and momentum in [0, 1)")
        if self.box_weight < 1 or self.box_dilation < 0:
            raise ValueError("box_weight must be >= 1 and box_dilation >= 0")
        if self.input_scale <= 0:
            raise ValueError(f"input_scale must be > 0, got {self.input_scale}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.stride_signal not in STRIDE_SIGNALS:
            raise ValueError(f"stride_signal must be one of {STRIDE_SIGNALS}, got {self.stride_signal!r}")

        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.fusion_max_age < 1:
            raise ValueError(f"fusion_max_age must be >= 1, got {self.fusion_max_age}")
        if self.stride_signal == "change" and self.fusion == "none":
            raise ValueError("stride_signal='change' watches the carried teacher answer, so it needs fusion='flow'; "
                             "with fusion='none' (the student alone) use stride_signal='paper' or 'unseen'")
        if self.stride_window < 1:
            raise ValueError(f"stride_window must be >= 1, got {self.stride_window}")

    @property
    def signal(self) -> str:
        """The stride signal that runs: ``stride_signal`` with 'auto' resolved by ``fusion``."""
        if self.stride_signal == "auto":
            return "change" if self.fusion == "flow" else "paper"
        return self.stride_signal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DistillConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(values))


def add_config_arguments(parser: argparse.ArgumentParser, *, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per config field (``--accuracy-threshold`` ...), with its help and the paper's default.

    Options left out on the command line stay unset, so :func:`config_from_args`
    can tell "given" from "default" and a base config's values are kept.
    """
    group = parser.add_argument_group("online distillation (DistillConfig; defaults are the paper's)")
    for f in fields(DistillConfig):
        if f.name in skip:
            continue
        meta = f.metadata
        kind = type(f.default) if f.default is not MISSING else str
        names = ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        group.add_argument(*names, dest=f"config_{f.name}", type=kind, default=None, choices=meta.get("choices"),
                           metavar=None if meta.get("choices") else kind.__name__.upper(),
                           help=f"{meta.get('help', '')} (default {f.default})")


def set_config_defaults(parser: argparse.ArgumentParser, **values: Any) -> None:
    """A command's own defaults for config fields (``input_scale=0.5``), by field name.

    The flags' destinations are ``config_<field>``; setting ``scale=...`` on the
    parser would silently change nothing, so unknown names are an error here.
    """
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"not DistillConfig fields: {unknown}")
    parser.set_defaults(**{f"config_{name}": value for name, value in values.items()})


def config_from_args(args: argparse.Namespace, base: Optional[DistillConfig] = None) -> DistillConfig:
    """The config the command line asked for: ``base`` (or the defaults) with the given flags applied."""
    base = base if base is not None else DistillConfig()
    given = {f.name: getattr(args, f"config_{f.name}") for f in fields(DistillConfig)
             if getattr(args, f"config_{f.name}", None) is not None}
    return DistillConfig.from_dict({**base.to_dict(), **given})
