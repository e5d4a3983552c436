"""The PyTorch backend: the same network and update rule as the ORT artifacts.

It is the reference the ORT trajectory is tested against, and the fallback
where no onnxruntime-training wheel exists.  It starts from the artifact
directory's ``initial_weights.npz`` (written by `jitnet export`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from core.manifest import ArtifactError, load_manifest
from edge_agent.student import (StepResult, TrainBatch, check_image, restore_snapshot, save_snapshot, stage_snapshot,
                                to_nchw)


class TorchTrainer:
    backend = "torch"

    def __init__(self, artifact_dir: Path | str, *, device: str = "auto", threads: Optional[int] = None):
        try:
            import torch
        except ImportError as exc:
            raise ArtifactError("the torch backend needs PyTorch: pip install 'jitnet-edge[export]'") from exc
        from export.jitnet import JITNet, JITNetSpec

        self.torch = torch
        self.artifact_dir = Path(artifact_dir)
        self.manifest = load_manifest(self.artifact_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if threads:
            torch.set_num_threads(threads)
        self.model = JITNet(JITNetSpec(self.manifest.width, self.manifest.num_classes)).to(device)
        weights = self.manifest.path(self.artifact_dir, "weights")
        try:
            with np.load(weights) as npz:
                state = {k: torch.from_numpy(npz[k]) for k in npz.files}
            self.model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise ArtifactError(f"cannot load {weights} ({exc}); re-create it with: jitnet export --out {self.artifact_dir}") from exc
        self.model.train()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.manifest.learning_rate, momentum=self.manifest.momentum
        )
        self.steps = 0
        self._version = 0

    def predict_logits(self, image: np.ndarray) -> np.ndarray:
        from export.jitnet import resize_upsampling

        check_image(image, self.manifest.stride)
        # Inference is never differentiated: F.interpolate is the same bilinear, faster.
        with self.torch.no_grad(), resize_upsampling():
            return self.model(self.torch.from_numpy(to_nchw(image)).to(self.device))[0].cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_logits(image).argmax(0).astype(np.uint8)

    @property
    def version(self) -> int:
        """Changes with every optimizer step (and restore): predictions at one version stay valid until the next."""
        return self._version

    def prepare(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> TrainBatch:
        """Validate and convert one lesson once; every step on it reuses the result."""
        return TrainBatch.of(image, labels, pixel_weights, self.manifest)

    def train_step(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> StepResult:
        return self.step(self.prepare(image, labels, pixel_weights))

    def step(self, batch: TrainBatch) -> StepResult:
        torch = self.torch
        x = torch.from_numpy(batch.x).to(self.device)
        y = torch.from_numpy(batch.labels).to(self.device)
        w = torch.from_numpy(batch.weights).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = (torch.nn.functional.cross_entropy(logits, y, reduction="none") * w).mean()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        self._version += 1
        return StepResult(float(loss.detach()), logits.detach()[0].cpu().numpy())

    def save(self, state_dir: Path | str) -> Path:
        return save_snapshot(self, state_dir, self._write_state)

    def stage(self, state_dir: Path | str) -> "tuple[Path, dict]":
        return stage_snapshot(self, state_dir, self._write_state)

    def _write_state(self, folder: Path) -> None:
        self.torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, folder / "state.pt")

    def restore(self, state_dir: Path | str) -> bool:
        import copy

        def load(folder: Path) -> None:
            blob = self.torch.load(folder / "state.pt", map_location=self.device, weights_only=True)
            model, optimizer = copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())
            try:  # all or nothing: weights without their momentum (or half the weights) are never kept
                self.model.load_state_dict(blob["model"])
                self.optimizer.load_state_dict(blob["optimizer"])
            except BaseException:
                self.model.load_state_dict(model)
                self.optimizer.load_state_dict(optimizer)
                raise
            self._version += 1

        return restore_snapshot(self, state_dir, load)
