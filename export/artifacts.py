"""Turn JITNet (PyTorch) into ONNX Runtime on-device training artifacts.

The offline half of on-device training: needs torch, runs once per model.
Writes a self-describing directory (see core/manifest.py) that the edge
agent loads with onnxruntime-training alone: the graphs (rewritten for CPU
speed by :mod:`export.graph_rewrites`), the initial weights and the manifest,
put in place whole by :mod:`export.atomic_dir`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
import torch

from core.config import DistillConfig
from core.manifest import FORMAT_VERSION, Manifest
from export.atomic_dir import replace_dir
from export.graph_rewrites import inference_graph, optimize_training_graph, repair_eval_graph, simplify_batchnorm
from export.jitnet import INPUT_MEAN, INPUT_STD, STRIDE, JITNet, build_jitnet, count_parameters, resize_upsampling

log = logging.getLogger(__name__)

OPSET = 17  # ORT 1.19 training accepts 14-21
FILES = {
    "training": "training_model.onnx",
    "eval": "eval_model.onnx",
    "optimizer": "optimizer_model.onnx",
    "checkpoint": "checkpoint",
    "inference": "inference_model.onnx",
    "weights": "initial_weights.npz",  # the same weights for the torch backend
}


def _loss_block():
    """Per-pixel cross-entropy times a per-pixel weight, averaged over pixels.

    ORT's built-in CrossEntropyLoss expects classes in the last dimension; the
    logits here are N x C x H x W, so the loss graph is written by hand.
    """
    from onnxruntime.training import onnxblock

    class WeightedPixelCrossEntropy(onnxblock.Block):
        def build(self, logits_name: str) -> str:
            graph = self.base.graph
            graph.input.append(onnx.helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, ["N", "H", "W"]))
            graph.input.append(
                onnx.helper.make_tensor_value_info("pixel_weights", onnx.TensorProto.FLOAT, ["N", "H", "W"])
            )
            graph.node.append(
                onnx.helper.make_node(
                    "SoftmaxCrossEntropyLoss",
                    [logits_name, "labels"],
                    ["pixel_loss", "log_prob"],
                    reduction="none",
                    name="pixel_cross_entropy",
                )
            )
            graph.node.append(onnx.helper.make_node("Mul", ["pixel_loss", "pixel_weights"], ["weighted_loss"]))
            graph.node.append(onnx.helper.make_node("ReduceMean", ["weighted_loss"], ["loss"], keepdims=0))
            return "loss"

    return WeightedPixelCrossEntropy()


def _sgd_momentum_block(momentum: float):
    """SGD with momentum, expressed exactly with ORT's AdamW kernel.

    ORT's SGD has no momentum and custom optimizer graphs are rejected.  AdamW
    with beta1=m, beta2=1, eps=1, no bias correction and no weight decay keeps
    v = 0 and m_t = m*m_{t-1} + (1-m)*g, so its update is lr' * m_t; with
    lr' = lr / (1 - m) that is exactly torch.optim.SGD(lr, momentum=m).
    """
    from onnxruntime.training import onnxblock

    return onnxblock.optim.AdamW(bias_correction=False, betas=(momentum, 1.0), eps=1.0, weight_decay=0.0)


def export_onnx(model: JITNet, path: Path, height: int, width: int, *, resize: bool = False) -> None:
    """The forward graph in training mode (batch-statistics normalisation), dynamic H x W.

    ``resize`` exports the upsampling as ONNX Resize (same values): only for
    the inference graph, which is never differentiated (ORT has no Resize
    gradient on CPU).
    """
    model.train()
    dummy = torch.rand(1, 3, height, width) * 255.0
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(warnings.catch_warnings())
        # F.pad's constant pad list exports through a reversing Slice that the
        # exporter cannot constant-fold; the graph is right, the warning noise.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        if resize:
            stack.enter_context(resize_upsampling())
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {2: "H", 3: "W"}, "logits": {2: "H", 3: "W"}},
            opset_version=OPSET,
            dynamo=False,
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
            export_params=True,
        )


@contextlib.contextmanager
def _silenced_stderr():
    """Route fd 2 (where ORT's C++ logger writes) to a file; replay it on failure."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            tail = sink.read()[-4000:].decode(errors="replace")
            log.error("artifact generation failed; its last log lines:\n%s", tail)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("jitnet-edge", "torch", "onnx", "onnxruntime-training-cpu", "onnxruntime-training"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def generate(
    out_dir: Path | str,
    *,
    class_names: Sequence[str],
    width: float = 0.5,
    height_px: int = 384,
    width_px: int = 640,
    config: DistillConfig = DistillConfig(),
    model: Optional[JITNet] = None,
    seed: int = 0,
    quiet: bool = True,
) -> Manifest:
    """Write the artifact directory and return its manifest.

    ``class_names`` are the foreground groups (background is added as class 0).
    The directory is written to a temporary sibling and renamed into place, so
    an interrupted export never leaves a half-written directory behind.
    """
    from onnxruntime.training import artifacts

    if height_px % STRIDE or width_px % STRIDE:
        raise ValueError(f"export size must be a multiple of {STRIDE}, got {height_px}x{width_px}")
    names = ["background", *[c for c in class_names if c != "background"]]
    if model is None:
        model = build_jitnet(width, len(names), seed=seed)
    if model.spec.num_classes != len(names):
        raise ValueError(f"model has {model.spec.num_classes} classes but {len(names)} names were given")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        forward_path = work / "forward.onnx"
        export_onnx(model, forward_path, height_px, width_px)
        forward = simplify_batchnorm(onnx.load(str(forward_path)))
        param_names = [init.name for init in forward.graph.initializer]
        # generate_artifacts logs at INFO to stderr whatever the logger says.
        with _silenced_stderr() if quiet else contextlib.nullcontext():
            artifacts.generate_artifacts(
                forward,
                requires_grad=param_names,
                frozen_params=[],
                loss=_loss_block(),
                optimizer=_sgd_momentum_block(config.momentum),
                artifact_directory=str(work),
                additional_output_names=["logits"],
            )
        repair_eval_graph(work / FILES["eval"])
        optimize_training_graph(work / FILES["training"])
        export_onnx(model, forward_path, height_px, width_px, resize=True)
        inference = simplify_batchnorm(onnx.load(str(forward_path)))
        onnx.save(inference_graph(inference), str(work / FILES["inference"]))
        forward_path.unlink()
        np.savez(work / FILES["weights"], **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
        manifest = Manifest(
            class_names=names,
            width=model.spec.width,
            input_height=height_px,
            input_width=width_px,
            files=dict(FILES),
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            optimizer_learning_rate=config.learning_rate / (1.0 - config.momentum),
            input_normalization={
                "layout": "NCHW",
                "channels": "RGB",
                "dtype": "float32",
                "range": [0.0, 255.0],
                "mean": list(INPUT_MEAN),
                "std": list(INPUT_STD),
                "applied_in_graph": True,
            },
            stride=STRIDE,
            parameter_count=count_parameters(model),
            versions=_versions(),
            format_version=FORMAT_VERSION,
        )
        manifest.save(work)
        replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("wrote ONNX Runtime training artifacts to %s (%d parameters)", out_dir, manifest.parameter_count)
    return manifest
