"""The on-device trainer: predict and train JITNet from an artifact directory.

Two backends share one interface.  ``ort`` (default) runs the artifacts with
onnxruntime-training and never imports torch.  ``torch`` trains the same
network in PyTorch: the reference, and the fallback where no
onnxruntime-training wheel exists (aarch64 Jetson, Python 3.12+ for CUDA).

The trainer works on the student's grid: RGB uint8 images whose height and
width are multiples of 32.  Callers map camera frames onto that grid with
:class:`core.geometry.Geometry`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from edge_agent.student import StepResult, Trainer

__all__ = ["BACKENDS", "StepResult", "Trainer", "load_trainer"]

BACKENDS = ("ort", "torch")


def load_trainer(artifact_dir: Path | str, *, backend: str = "ort", device: str = "auto", threads: Optional[int] = None) -> Trainer:
    """The trainer for ``backend`` (``ort`` or ``torch``)."""
    if backend == "ort":
        from edge_agent.ort_trainer import OrtTrainer

        return OrtTrainer(artifact_dir, device=device, threads=threads)
    if backend == "torch":
        from edge_agent.torch_trainer import TorchTrainer

        return TorchTrainer(artifact_dir, device=device, threads=threads)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
