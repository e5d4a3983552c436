"""Turn JITNet (PyTorch) into ONNX Runtime on-device training artifacts.

The offline half of on-device training: needs torch, runs once per model.
Writes a self-describing directory (see edge_agent/manifest.py) that the edge
agent loads with onnxruntime-training alone.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
import torch

from core.config import DistillConfig
from core.manifest import FORMAT_VERSION, Manifest
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


def simplify_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the running-statistics arithmetic the exporter adds around BatchNorm.

    With ``track_running_stats=False`` the legacy exporter computes a mean and
    variance of every normalised tensor just to feed BatchNormalization's
    running-statistics inputs, which training mode ignores for its output.
    Those reductions cost full passes over every activation, forward and
    backward; constant inputs give the same result for free.
    """
    graph = model.graph
    constants = []
    for i, node in enumerate([n for n in graph.node if n.op_type == "BatchNormalization"]):
        scale = next(init for init in graph.initializer if init.name == node.input[1])
        channels = int(scale.dims[0])
        for slot, value in ((3, 0.0), (4, 1.0)):
            name = f"bn_const_{i}_{slot}"
            constants.append(
                onnx.helper.make_node(
                    "Constant", [], [name],
                    value=onnx.helper.make_tensor(name + "_value", onnx.TensorProto.FLOAT, [channels], [value] * channels),
                ),
            )
            node.input[slot] = name
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(constants + rest)
    _remove_dead_nodes(graph)
    return model


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)


def _inference_graph(forward: onnx.ModelProto) -> onnx.ModelProto:
    """The loss-free forward graph with the parameters turned into graph inputs.

    The device binds those inputs to the live training parameters, so the
    fastest per-frame session always sees the latest optimizer step without a
    re-export.
    """
    model = onnx.ModelProto()
    model.CopyFrom(forward)
    graph = model.graph
    params = list(graph.initializer)
    del graph.initializer[:]
    for init in params:
        graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return model


def conv_input_grads_as_conv(model: onnx.ModelProto) -> int:
    """Compute stride-1 convolutions' input gradients with a forward Conv.

    ORT's CPU ConvGrad builds the input gradient as a GEMM into a
    (C_in*k*k) x (H*W) column buffer followed by a single-threaded col2im: at
    192x320 that buffer is ~90 MB and the kernel runs several times slower
    than a forward convolution of the same size.  For stride 1 the input
    gradient *is* a forward convolution of the output gradient with the
    weights transposed (in/out) and flipped, padded by k-1-p.  ConvGrad then
    only computes the weight (and bias) gradients.  Returns how many
    ConvGrad nodes were rewritten.
    """
    graph = model.graph
    nodes = []
    rewritten = 0
    for node in graph.node:
        nodes.append(node)
        if node.op_type != "ConvGrad" or not node.output or not node.output[0]:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", []))
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        if (
            len(kernel) != 2
            or attrs.get("group", 1) != 1
            or any(s != 1 for s in attrs.get("strides", [1, 1]))
            or any(d != 1 for d in attrs.get("dilations", [1, 1]))
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
        ):
            continue
        grad_out, _, weight = node.input[:3]
        grad_in = node.output[0]
        base = f"{node.name or grad_in}/dX_as_conv"
        flip_pads = [kernel[0] - 1 - pads[0], kernel[1] - 1 - pads[1], kernel[0] - 1 - pads[2], kernel[1] - 1 - pads[3]]
        if min(flip_pads) < 0:
            continue
        names = {k: f"{base}/{k}" for k in ("wt", "wf", "starts", "ends", "axes", "steps")}
        for key, values in (("starts", [-1, -1]), ("ends", [-(2**63) + 1] * 2), ("axes", [2, 3]), ("steps", [-1, -1])):
            nodes.append(onnx.helper.make_node(
                "Constant", [], [names[key]],
                value=onnx.helper.make_tensor(names[key] + "_value", onnx.TensorProto.INT64, [2], values),
            ))
        nodes.append(onnx.helper.make_node("Transpose", [weight], [names["wt"]], perm=[1, 0, 2, 3], name=f"{base}/transpose"))
        nodes.append(onnx.helper.make_node(
            "Slice", [names["wt"], names["starts"], names["ends"], names["axes"], names["steps"]], [names["wf"]],
            name=f"{base}/flip",
        ))
        nodes.append(onnx.helper.make_node(
            "Conv", [grad_out, names["wf"]], [grad_in], name=f"{base}/conv",
            kernel_shape=kernel, pads=flip_pads, strides=[1, 1], dilations=[1, 1], group=1,
        ))
        node.output[0] = ""
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _const(nodes: list, name: str, values: Sequence[int]) -> str:
    nodes.append(onnx.helper.make_node(
        "Constant", [], [name], value=onnx.helper.make_tensor(name + "_value", onnx.TensorProto.INT64, [len(values)], values),
    ))
    return name


def conv_weight_grads_as_gemm(model: onnx.ModelProto) -> int:
    """Compute 3x3 stride-1 convolutions' weight gradients with nine GEMMs.

    ORT's ConvGrad forms the weight gradient from an im2col copy of the input
    (9x the input, single-threaded) and one GEMM.  Here the input is padded
    and flattened once, and the output gradient, shifted by each of the nine
    kernel offsets along the flattened rows, is multiplied with it directly:
    dW[:, :, i, j] = (X_flat @ dY_shifted(i, j)^T)^T.  The output gradient is the
    smaller tensor in every such layer of JITNet, so the copies shrink.  Runs
    after :func:`conv_input_grads_as_conv` (which moved dX out of ConvGrad);
    nodes that still compute dX or a bias gradient are left alone.
    """
    graph = model.graph
    nodes: list = []
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        outputs = list(node.output) + [""] * (3 - len(node.output))
        if (
            node.op_type != "ConvGrad"
            or outputs[0] or outputs[2] or not outputs[1]
            or list(attrs.get("kernel_shape", [])) != [3, 3]
            or list(attrs.get("pads", [])) != [1, 1, 1, 1]
            or attrs.get("group", 1) != 1
            or any(v != 1 for v in attrs.get("strides", [1, 1]))
            or any(v != 1 for v in attrs.get("dilations", [1, 1]))
        ):
            nodes.append(node)
            continue
        weight_shape = _initializer_shape(graph, node.input[2])
        if weight_shape is None:
            nodes.append(node)
            continue
        c_out, c_in = weight_shape[:2]
        grad_out, x = node.input[0], node.input[1]
        b = f"{node.name or outputs[1]}/dW_as_gemm"
        mk = onnx.helper.make_node
        # Width of a padded row, Wp = W + 2, and the padded input length L = (H + 3) * Wp.
        nodes.append(mk("Shape", [x], [f"{b}/shape"], start=3, end=4))
        nodes.append(mk("Add", [f"{b}/shape", _const(nodes, f"{b}/two", [2])], [f"{b}/wp"]))
        # X zero-padded (1 row on top, 2 below, 1 column each side), flattened to C_in x L.
        nodes.append(mk("Pad", [x, _const(nodes, f"{b}/xpads", [0, 0, 1, 1, 0, 0, 2, 1])], [f"{b}/xpad"]))
        nodes.append(mk("Reshape", [f"{b}/xpad", _const(nodes, f"{b}/xshape", [c_in, -1])], [f"{b}/xflat"]))
        nodes.append(mk("Shape", [f"{b}/xflat"], [f"{b}/len"], start=1, end=2))
        # dY with 2 zero columns per row (so shifted rows never wrap into data),
        # flattened, then padded so that every shift is a plain slice.
        nodes.append(mk("Pad", [grad_out, _const(nodes, f"{b}/ypads", [0, 0, 0, 0, 0, 0, 0, 2])], [f"{b}/ypad"]))
        nodes.append(mk("Reshape", [f"{b}/ypad", _const(nodes, f"{b}/yshape", [c_out, -1])], [f"{b}/yflat"]))
        nodes.append(mk("Mul", [f"{b}/wp", _const(nodes, f"{b}/three", [3])], [f"{b}/tail"]))
        nodes.append(mk("Mul", [f"{b}/wp", _const(nodes, f"{b}/twob", [2])], [f"{b}/wp2"]))
        nodes.append(mk("Add", [f"{b}/wp2", _const(nodes, f"{b}/twoc", [2])], [f"{b}/smax"]))
        nodes.append(mk("Concat", [_const(nodes, f"{b}/zero", [0]), f"{b}/smax", f"{b}/zero", f"{b}/tail"], [f"{b}/bpads"], axis=0))
        nodes.append(mk("Pad", [f"{b}/yflat", f"{b}/bpads"], [f"{b}/ybig"]))
        axis = _const(nodes, f"{b}/axis", [1])
        parts = []
        for i in range(3):
            for j in range(3):
                t = f"{b}/{i}{j}"
                # start = (2 - i) * Wp + (2 - j): dY shifted by the kernel offset (i, j).
                nodes.append(mk("Mul", [f"{b}/wp", _const(nodes, f"{t}/rows", [2 - i])], [f"{t}/r"]))
                nodes.append(mk("Add", [f"{t}/r", _const(nodes, f"{t}/cols", [2 - j])], [f"{t}/start"]))
                nodes.append(mk("Add", [f"{t}/start", f"{b}/len"], [f"{t}/end"]))
                nodes.append(mk("Slice", [f"{b}/ybig", f"{t}/start", f"{t}/end", axis], [f"{t}/dy"]))
                # X_flat @ dY_shifted^T (C_in x C_out): MLAS packs the small
                # shifted dY, not the large input, for each of the nine products.
                nodes.append(mk("Gemm", [f"{b}/xflat", f"{t}/dy"], [f"{t}/dw"], transB=1))
                parts.append(f"{t}/dw")
        nodes.append(mk("Concat", parts, [f"{b}/dw9"], axis=1))
        nodes.append(mk("Reshape", [f"{b}/dw9", _const(nodes, f"{b}/wshape", [c_in, 3, 3, c_out])], [f"{b}/dw33"]))
        nodes.append(mk("Transpose", [f"{b}/dw33"], [outputs[1]], perm=[3, 0, 1, 2]))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _initializer_shape(graph: onnx.GraphProto, name: str) -> Optional[list[int]]:
    """Static shape of a parameter: an initializer, or a graph input (training models keep them there)."""
    for init in graph.initializer:
        if init.name == name:
            return list(init.dims)
    for value in graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                return [d.dim_value for d in dims]
    return None


def relu_grads_as_mul(model: onnx.ModelProto) -> int:
    """ReluGrad(dY, Y) -> dY * float(Y > 0): the same values, ~2.5x faster on CPU.

    ORT's CPU ReluGrad kernel is a scalar loop; Greater, Cast and Mul are
    vectorised and the mask is a byte per element.
    """
    graph = model.graph
    nodes: list = []
    zero = "relu_grad_zero"
    nodes.append(onnx.helper.make_node(
        "Constant", [], [zero], value=onnx.helper.make_tensor(zero + "_value", onnx.TensorProto.FLOAT, [], [0.0]),
    ))
    rewritten = 0
    for node in graph.node:
        if node.op_type != "ReluGrad" or len(node.input) != 2:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        mk = onnx.helper.make_node
        nodes.append(mk("Greater", [node.input[1], zero], [f"{base}/positive"]))
        nodes.append(mk("Cast", [f"{base}/positive"], [f"{base}/mask"], to=onnx.TensorProto.FLOAT))
        nodes.append(mk("Mul", [node.input[0], f"{base}/mask"], [node.output[0]], name=f"{base}/as_mul"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _optimize_training_graph(path: Path) -> None:
    """Swap slow ORT CPU gradient kernels for equivalent faster subgraphs."""
    model = onnx.load(str(path))
    counts = (conv_input_grads_as_conv(model), conv_weight_grads_as_gemm(model), relu_grads_as_mul(model))
    onnx.save(model, str(path))
    log.debug("training graph: %d conv dX as Conv, %d conv dW as GEMMs, %d ReluGrad as Mul", *counts)


def _repair_eval_graph(path: Path) -> None:
    """ORT's generated eval graph sets BatchNormalization training_mode=0 but keeps
    three outputs, which fails to load; batch statistics are what we want in
    evaluation too, so restore training_mode=1."""
    model = onnx.load(str(path))
    changed = False
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for attr in node.attribute:
                if attr.name == "training_mode" and attr.i == 0:
                    attr.i = 1
                    changed = True
    if changed:
        onnx.save(model, str(path))


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


#: Tests set this to a step name to SIGKILL the export right there (a crash, deterministically).
FAULT_ENV = "JITNET_EXPORT_KILL_AT"


def _fault_point(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the OS cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target`` so that ``target`` is always a whole directory, old or new.

    The old directory is swapped out in one atomic step and deleted only after;
    a crash at any point leaves ``target`` complete (plus, at worst, a hidden
    leftover beside it).  Without RENAME_EXCHANGE the old one is renamed aside
    first, which leaves a window without ``target``, but never a mix of the two.
    """
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        _fault_point("after-replace")
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old directory
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, aside)
    os.replace(new, target)
    _fault_point("after-replace")
    shutil.rmtree(aside, ignore_errors=True)


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
        _repair_eval_graph(work / FILES["eval"])
        _optimize_training_graph(work / FILES["training"])
        export_onnx(model, forward_path, height_px, width_px, resize=True)
        inference = simplify_batchnorm(onnx.load(str(forward_path)))
        onnx.save(_inference_graph(inference), str(work / FILES["inference"]))
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
        _fault_point("before-replace")
        replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("wrote ONNX Runtime training artifacts to %s (%d parameters)", out_dir, manifest.parameter_count)
    return manifest
