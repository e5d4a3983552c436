"""The per-frame inference graph with its conversions inside: uint8 HWC in, uint8 class ids out.

Camera frames are uint8 RGB (H, W, 3) and the agent wants one class id per
pixel.  Doing the float32 NCHW copy, the logits copy-out and an int64 argmax in
numpy costs more than a third of a small frame's inference time; ORT does the
same work in its kernels (Cast, Transpose, ArgMax) on buffers it already has,
and the caller binds one preallocated uint8 output per frame size.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

IMAGE = "image"          # the student graph's float32 (1, 3, H, W) input
LOGITS = "logits"        # its (1, C, H, W) output
IMAGE_U8 = "image_u8"    # the wrapped graph's uint8 (1, H, W, 3) input
LABELS = "labels"        # the wrapped graph's uint8 (1, H, W) output


def with_uint8_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that takes ``image_u8`` (1, H, W, 3) uint8 and returns ``labels`` (1, H, W) uint8.

    The student's own input and output keep their names inside the graph, so
    every other input (the bound parameters, NCHWc packed weights) is untouched.
    Raises ValueError when the graph is not a JITNet inference graph.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inputs = {i.name: i for i in graph.input}
    outputs = [o.name for o in graph.output]
    if IMAGE not in inputs or LOGITS not in outputs:
        raise ValueError(f"not a JITNet inference graph: needs input {IMAGE!r} and output {LOGITS!r}")
    dims = inputs[IMAGE].type.tensor_type.shape.dim
    h = dims[2].dim_param or dims[2].dim_value
    w = dims[3].dim_param or dims[3].dim_value

    image_in = helper.make_tensor_value_info(IMAGE_U8, TensorProto.UINT8, [1, h, w, 3])
    labels_out = helper.make_tensor_value_info(LABELS, TensorProto.UINT8, [1, h, w])
    front = [
        helper.make_node("Cast", [IMAGE_U8], ["image_f32_nhwc"], to=TensorProto.FLOAT, name="u8_to_f32"),
        helper.make_node("Transpose", ["image_f32_nhwc"], [IMAGE], perm=[0, 3, 1, 2], name="nhwc_to_nchw"),
    ]
    back = [
        helper.make_node("ArgMax", [LOGITS], ["labels_i64"], axis=1, keepdims=0, name="class_ids"),
        helper.make_node("Cast", ["labels_i64"], [LABELS], to=TensorProto.UINT8, name="ids_to_u8"),
    ]
    nodes = front + list(graph.node) + back
    del graph.node[:]
    graph.node.extend(nodes)
    kept_inputs = [i for i in graph.input if i.name != IMAGE]
    del graph.input[:]
    graph.input.extend([image_in] + kept_inputs)
    del graph.output[:]
    graph.output.extend([labels_out])
    return out
