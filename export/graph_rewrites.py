"""Rewrites of the exported ONNX graphs: same values, fewer passes over memory on a CPU.

The exporter and ORT's artifact generator produce correct graphs that are slow
on a CPU (running-statistics arithmetic around BatchNorm, ConvGrad's im2col
and col2im, a scalar ReluGrad loop) or do not load (the eval graph's
BatchNorm).  Each function here rewrites one such pattern in place into an
equivalent subgraph of fast kernels; :mod:`export.artifacts` applies them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import onnx

log = logging.getLogger(__name__)


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


def inference_graph(forward: onnx.ModelProto) -> onnx.ModelProto:
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


def optimize_training_graph(path: Path) -> None:
    """Swap slow ORT CPU gradient kernels for equivalent faster subgraphs."""
    model = onnx.load(str(path))
    counts = (conv_input_grads_as_conv(model), conv_weight_grads_as_gemm(model), relu_grads_as_mul(model))
    onnx.save(model, str(path))
    log.debug("training graph: %d conv dX as Conv, %d conv dW as GEMMs, %d ReluGrad as Mul", *counts)


def repair_eval_graph(path: Path) -> None:
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
