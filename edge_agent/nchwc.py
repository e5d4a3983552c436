"""NCHWc (blocked-channel) graphs for ONNX Runtime's fastest CPU convolutions.

ORT's MLAS runs 3x3 convolutions fastest in its blocked layout, but its own
layout pass cannot be used here (its optimizer changes the results of the
training-mode BatchNorm graph), so the trainer rewrites its graphs by hand,
exactly, for this CPU's block size.  See docs/performance.md.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def nchwc_block_size() -> int:
    """Channel block of ONNX Runtime's NCHWc convolutions on this CPU; 0 where it has none.

    16 with AVX-512, 8 with AVX2, none on ARM.  Found by letting ORT lay out
    a probe convolution whose weights are their own indices: the flat
    position of weight[0, 1] in the reordered filter is the block size.
    """
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    channels = 64
    weight = np.arange(channels * channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])], "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, channels, 4, 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    probe.ir_version = 8
    try:
        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
            ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath)
    except Exception as exc:  # no NCHWc is a slower path, never a failure
        log.debug("NCHWc probe failed (%s); using plain convolutions", exc)
        return 0
    conv = next((n for n in optimized.graph.node if n.domain == NCHWC_DOMAIN and n.op_type == "Conv"), None)
    if conv is None:
        return 0
    packed = next(i for i in optimized.graph.initializer if i.name == conv.input[1])
    flat = numpy_helper.to_array(packed).ravel()
    found = np.flatnonzero(flat == 1.0)
    block = int(found[0]) if found.size else 0
    return block if block in (4, 8, 16, 32) else 0


NCHWC_DOMAIN = "com.microsoft.nchwc"


def nchwc_graphs(
    model: "onnx.ModelProto", block: int, *, inline_pack: bool = False, min_kernel_area: int = 9
) -> tuple["onnx.ModelProto", Optional["onnx.ModelProto"]]:
    """Split the inference graph into (blocked-layout inference graph, weight-packing graph).

    ORT runs convolutions in its blocked NCHWc layout (~1.3x faster on x86)
    only when their weights are constants; here the weights are graph inputs
    bound to the live training parameters.  So the same rewrite is done by
    hand: activations are reordered around each convolution, and the
    weights are packed into the blocked filter layout by a second, tiny
    graph that the trainer reruns only after the parameters changed.  The
    numbers stay those of the plain graph (same kernels' arithmetic).

    With ``inline_pack`` (the training graph, whose weights change every
    step) the packing stays inside the graph and no packing graph is made.
    Convolutions whose weights are computed in the graph (the transposed,
    flipped weights of :func:`export.graph_rewrites.conv_input_grads_as_conv`)
    are rewritten too when their shape can be traced back to a parameter.
    Convolutions with kernels smaller than ``min_kernel_area`` (1x1, 1x3,
    3x1) stay NCHW: their activation reorders cost about what they save.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    shapes.update(_flipped_weight_shapes(graph, shapes))
    nodes: list = []
    pack_nodes: list = nodes if inline_pack else []
    packed: list = []  # (name, shape) of every packed weight / bias
    packed_from: set[str] = set()
    reordered: dict[str, str] = {}

    def const(name: str, values: list[int]) -> str:
        pack_nodes.append(helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name + "_v", onnx.TensorProto.INT64, [len(values)], values)
        ))
        return name

    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        wshape = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if node.domain not in ("", "ai.onnx") or not wshape or len(wshape) != 4 or attrs.get("group", 1) != 1 or 0 in wshape:
            nodes.append(node)
            continue
        cout, cin, kh, kw = wshape
        if kh * kw < min_kernel_area:
            nodes.append(node)
            continue
        cout_pad = -(-cout // block) * block
        nchw_input = cin < block  # small inputs (the stem) are read in NCHW directly
        cin_pad = cin if nchw_input else -(-cin // block) * block
        b = f"{node.name or node.output[0]}/nchwc"
        w = node.input[1]
        packed_from.add(w)
        if cout_pad != cout or cin_pad != cin:
            pads = const(f"{b}/wpads", [0, 0, 0, 0, cout_pad - cout, cin_pad - cin, 0, 0])
            pack_nodes.append(helper.make_node("Pad", [w, pads], [f"{b}/wpad"]))
            w = f"{b}/wpad"
        if nchw_input:  # OIhw{B}o
            split, perm = [cout_pad // block, block, cin, kh, kw], [0, 2, 3, 4, 1]
        else:  # OIhw{B}i{B}o
            split, perm = [cout_pad // block, block, cin_pad // block, block, kh, kw], [0, 2, 4, 5, 3, 1]
        pack_nodes.append(helper.make_node("Reshape", [w, const(f"{b}/split", split)], [f"{b}/wsplit"]))
        pack_nodes.append(helper.make_node("Transpose", [f"{b}/wsplit"], [f"{b}/wperm"], perm=perm))
        pack_nodes.append(helper.make_node("Reshape", [f"{b}/wperm", const(f"{b}/wshape", [cout_pad, cin_pad, kh, kw])], [f"{b}/w"]))
        packed.append((f"{b}/w", [cout_pad, cin_pad, kh, kw]))
        inputs = [node.input[0], f"{b}/w"]
        if not nchw_input:
            if node.input[0] not in reordered:
                reordered[node.input[0]] = f"{b}/x"
                nodes.append(helper.make_node("ReorderInput", [node.input[0]], [f"{b}/x"], domain=NCHWC_DOMAIN, channels_last=0))
            inputs[0] = reordered[node.input[0]]
        if len(node.input) > 2 and node.input[2]:
            packed_from.add(node.input[2])
            pads = const(f"{b}/bpads", [0, cout_pad - cout])
            pack_nodes.append(helper.make_node("Pad", [node.input[2], pads], [f"{b}/b"]))
            packed.append((f"{b}/b", [cout_pad]))
            inputs.append(f"{b}/b")
        keep = {k: v for k, v in attrs.items() if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        nodes.append(helper.make_node("Conv", inputs, [f"{b}/y"], domain=NCHWC_DOMAIN, name=f"{b}/conv", **keep))
        nodes.append(helper.make_node(
            "ReorderOutput", [f"{b}/y"], [node.output[0]], domain=NCHWC_DOMAIN, channels=cout, channels_last=0
        ))
    if not any(o.domain == NCHWC_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(NCHWC_DOMAIN, 1))
    if inline_pack:
        del graph.node[:]
        graph.node.extend(nodes)
        return model, None
    still_used = {i for n in nodes for i in n.input}
    pack_inputs = [v for v in graph.input if v.name in packed_from]
    pack_outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape) for name, shape in packed]
    pack = helper.make_model(
        helper.make_graph(pack_nodes, "pack_weights", pack_inputs, pack_outputs),
        opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")],
    )
    pack.ir_version = model.ir_version
    inputs = [v for v in graph.input if v.name not in packed_from or v.name in still_used]
    del graph.input[:]
    graph.input.extend(inputs + pack_outputs)
    del graph.node[:]
    graph.node.extend(nodes)
    return model, pack


def _flipped_weight_shapes(graph: "onnx.GraphProto", shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Shapes of Slice(Transpose(param, [1, 0, 2, 3])) outputs: the input-gradient convolutions' weights."""
    from onnx import helper

    transposed = {}
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in shapes:
            perm = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)
            if perm == [1, 0, 2, 3] and len(shapes[node.input[0]]) == 4:
                s = shapes[node.input[0]]
                transposed[node.output[0]] = [s[1], s[0], s[2], s[3]]
    found = dict(transposed)
    for node in graph.node:
        if node.op_type == "Slice" and node.input[0] in transposed:
            found[node.output[0]] = transposed[node.input[0]]  # a flip keeps the shape
    return found
