"""The on-device trainer: predict and train JITNet from an artifact directory.

Two backends share one interface.  ``ort`` (default) runs the artifacts with
onnxruntime-training and never imports torch.  ``torch`` trains the same
network in PyTorch: the reference, and the fallback where no
onnxruntime-training wheel exists (aarch64 Jetson, Python 3.12+ for CUDA).

The trainer works on the student's grid: RGB uint8 images whose height and
width are multiples of 32.  Callers map camera frames onto that grid with
:class:`edge_agent.frames.Geometry`.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from edge_agent.manifest import ArtifactError, Manifest, load_manifest
from edge_agent.state import SnapshotStore

log = logging.getLogger(__name__)

BACKENDS = ("ort", "torch")


@dataclass
class StepResult:
    loss: float
    #: (classes, H, W) logits of the forward pass the step trained on, i.e.
    #: of the weights *before* this step's update.
    logits: np.ndarray

    def prediction(self) -> np.ndarray:
        return self.logits.argmax(0).astype(np.uint8)


class Trainer(Protocol):
    manifest: Manifest
    backend: str
    device: str
    steps: int

    def predict(self, image: np.ndarray) -> np.ndarray: ...
    def train_step(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> StepResult: ...
    def save(self, state_dir: Path | str) -> Path: ...
    def restore(self, state_dir: Path | str) -> bool: ...


def check_image(image: np.ndarray, stride: int = 32) -> None:
    """The trainer takes the student's grid only; say how to get there otherwise."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"expected an RGB image of shape (H, W, 3), got {shape}; "
            "convert grayscale or RGBA frames to RGB first (cv2.cvtColor)"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    h, w = image.shape[:2]
    if h == 0 or w == 0 or h % stride or w % stride:
        raise ValueError(
            f"image is {h}x{w}; height and width must be positive multiples of {stride} "
            "(JITNet's total stride): pad or crop it, e.g. with edge_agent.frames.Geometry"
        )


def check_targets(image: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_classes: int) -> None:
    hw = image.shape[:2]
    if labels.shape != hw:
        raise ValueError(f"labels have shape {labels.shape}, expected {hw} to match the image")
    if weights.shape != hw:
        raise ValueError(f"pixel_weights have shape {weights.shape}, expected {hw} to match the image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
    if not np.all(np.isfinite(weights)) or float(weights.min()) < 0:
        raise ValueError("pixel_weights must be finite and >= 0")


def to_nchw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


class OrtTrainer:
    """JITNet training and inference with onnxruntime-training (no torch)."""

    backend = "ort"

    def __init__(self, artifact_dir: Path | str, *, device: str = "auto", threads: Optional[int] = None):
        from edge_agent.runtime import select_device, training_api

        self.api = training_api()
        import onnxruntime as ort

        self._ort = ort
        self.artifact_dir = Path(artifact_dir)
        self.manifest = load_manifest(self.artifact_dir)
        self.device = select_device(device)
        self.threads = threads
        self.steps = 0
        self._updates = 0  # optimizer steps taken by this object: packed weights follow them
        self._load(self.manifest.path(self.artifact_dir, "checkpoint"))

    # -- construction ---------------------------------------------------
    def _options(self):
        options = self._ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: the agent shares a
        # small CPU with decoding, the teacher client and other processes,
        # where spinning threads steal the cores the work needs (measured
        # on 2 busy cores: train step 1065 ms spinning vs 500 ms not).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _load(self, checkpoint: Path) -> None:
        api, m, d = self.api, self.manifest, self.artifact_dir
        try:
            self.state = api.CheckpointState.load_checkpoint(str(checkpoint))
            plain = str(m.path(d, "training"))
            training = self._training_model()
            try:
                self.module = api.Module(
                    training, self.state, str(m.path(d, "eval")), device=self.device, session_options=self._options()
                )
            except Exception as exc:
                if training == plain:
                    raise
                log.warning("ORT rejected the NCHWc training graph (%s); using the plain one", exc)
                self.module = api.Module(
                    plain, self.state, str(m.path(d, "eval")), device=self.device, session_options=self._options()
                )
            self.optimizer = api.Optimizer(str(m.path(d, "optimizer")), self.module)
        except Exception as exc:
            raise ArtifactError(
                f"ONNX Runtime could not load the artifacts in {d} ({exc}); "
                f"re-create them with: jitnet export --out {d}"
            ) from exc
        self.optimizer.set_learning_rate(m.optimizer_learning_rate)
        self.module.train()
        self._bind_inference()

    def _training_model(self) -> str:
        """The training graph, with NCHWc forward convolutions where ORT has them.

        The rewrite depends on this CPU's block size, so it happens here and
        not at export; the rewritten copy lives in a temporary directory
        for as long as this trainer (the Module only reads it when loading).
        """
        path = self.manifest.path(self.artifact_dir, "training")
        block = nchwc_block_size() if self.device == "cpu" else 0
        if not block:
            return str(path)
        import tempfile

        import onnx

        try:
            model, _ = nchwc_graphs(onnx.load(str(path)), block, inline_pack=True)
            self._workdir = tempfile.TemporaryDirectory(prefix="jitnet-train-")
            out = Path(self._workdir.name) / path.name
            onnx.save(model, str(out))
        except Exception as exc:  # a slower graph, never a failure
            log.warning("could not rewrite %s for NCHWc (%s); using it as is", path, exc)
            return str(path)
        return str(out)

    def _bind_inference(self) -> None:
        """Bind the loss-free inference graph to the live parameter buffers.

        On CPU, ``Parameter.data`` is a view of the tensor the optimizer
        updates in place, so every step is visible to inference at no cost
        and no re-export is needed.  Where ORT has NCHWc kernels the
        convolution weights go through a packing graph first, rerun after
        each update (see :func:`nchwc_graphs`).  On CUDA the eval graph
        (which reads the live parameters by construction) is used instead.
        """
        ort, m, d = self._ort, self.manifest, self.artifact_dir
        self._session = None
        self._pack = None
        self._packed_at = -1
        if self.device != "cpu":
            return
        model_path = str(m.path(d, "inference"))
        block = nchwc_block_size()
        if block:
            import onnx

            try:
                nchwc, pack = nchwc_graphs(onnx.load(model_path), block)
                self._session = ort.InferenceSession(
                    nchwc.SerializeToString(), self._options(), providers=["CPUExecutionProvider"]
                )
                self._pack = ort.InferenceSession(
                    pack.SerializeToString(), self._options(), providers=["CPUExecutionProvider"]
                )
                self._pack_binding = self._pack.io_binding()
            except Exception as exc:  # a slower graph, never a failure
                log.warning("NCHWc inference graph failed (%s); using the plain one", exc)
                self._session = self._pack = None
        if self._session is None:
            self._session = ort.InferenceSession(model_path, self._options(), providers=["CPUExecutionProvider"])
        self._binding = self._session.io_binding()
        wanted = {i.name for i in self._session.get_inputs()}
        pack_wanted = {i.name for i in self._pack.get_inputs()} if self._pack else set()
        self._param_views = []
        for name, param in self.state.parameters:
            view = param.data
            self._param_views.append(view)  # keeps the buffer referenced
            value = ort.OrtValue.ortvalue_from_numpy(view)
            if name in wanted:
                self._binding.bind_ortvalue_input(name, value)
            if name in pack_wanted:
                self._pack_binding.bind_ortvalue_input(name, value)
        if self._pack is not None:
            for out in self._pack.get_outputs():
                buffer = ort.OrtValue.ortvalue_from_shape_and_type(out.shape, np.float32)
                self._param_views.append(buffer)
                self._pack_binding.bind_ortvalue_output(out.name, buffer)
                self._binding.bind_ortvalue_input(out.name, buffer)

    # -- inference and training --------------------------------------
    def predict_logits(self, image: np.ndarray) -> np.ndarray:
        """(classes, H, W) logits with the current weights."""
        check_image(image, self.manifest.stride)
        x = to_nchw(image)
        if self._session is None:
            h, w = image.shape[:2]
            self.module.eval()
            try:
                _, logits = self.module(x, np.zeros((1, h, w), np.int64), np.zeros((1, h, w), np.float32))
            finally:
                self.module.train()
            return logits[0]
        if self._pack is not None and self._packed_at != self._updates:
            self._pack.run_with_iobinding(self._pack_binding)
            self._packed_at = self._updates
        self._binding.bind_cpu_input("image", x)
        self._binding.bind_output("logits", "cpu")
        self._session.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[0][0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class per pixel."""
        return self.predict_logits(image).argmax(0).astype(np.uint8)

    def train_step(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> StepResult:
        """One SGD-with-momentum step: forward, backward, update."""
        check_image(image, self.manifest.stride)
        check_targets(image, labels, pixel_weights, self.manifest.num_classes)
        loss, logits = self.module(
            to_nchw(image),
            np.ascontiguousarray(labels[None], dtype=np.int64),
            np.ascontiguousarray(pixel_weights[None], dtype=np.float32),
        )
        self.optimizer.step()
        self.module.lazy_reset_grad()
        self.steps += 1
        self._updates += 1
        return StepResult(float(loss), logits[0])

    # -- persistence -------------------------------------------------------
    def save(self, state_dir: Path | str) -> Path:
        """Snapshot weights and optimizer state (momentum) atomically."""

        def write(folder: Path) -> None:
            self.api.CheckpointState.save_checkpoint(self.state, str(folder / "checkpoint"), include_optimizer_state=True)

        return save_snapshot(self, state_dir, write)

    def restore(self, state_dir: Path | str) -> bool:
        """Load the newest intact snapshot; False when there is none."""
        found = latest_snapshot(self, state_dir)
        if found is None:
            return False
        folder, record = found
        self._load(folder / "checkpoint")
        self.steps = int(record.get("steps", 0))
        log.info("restored student state from %s (step %d)", folder, self.steps)
        return True


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
    flipped weights of :func:`export.artifacts.conv_input_grads_as_conv`)
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


def save_snapshot(trainer: Trainer, state_dir: Path | str, write) -> Path:
    """Publish a snapshot written by ``write(folder)``, stamped with what student it holds."""
    meta = {"backend": trainer.backend, "steps": trainer.steps, **_identity(trainer.manifest)}
    return SnapshotStore(state_dir).save(write, meta)


def latest_snapshot(trainer: Trainer, state_dir: Path | str):
    """The newest intact snapshot for this student, or None; refuses another student's state."""
    found = SnapshotStore(state_dir).latest()
    if found is not None:
        _check_identity(found[1], trainer.manifest, trainer.backend, found[0])
    return found


def _identity(manifest: Manifest) -> dict:
    return {"class_names": manifest.class_names, "width": manifest.width}


def _check_identity(record: dict, manifest: Manifest, backend: str, folder: Path) -> None:
    if record.get("backend") != backend:
        raise ArtifactError(f"{folder} was saved by the {record.get('backend')} backend, not {backend}")
    if record.get("class_names") != manifest.class_names or record.get("width") != manifest.width:
        raise ArtifactError(
            f"{folder} holds a student for classes {record.get('class_names')} at width {record.get('width')}, "
            f"but the artifacts are for {manifest.class_names} at width {manifest.width}; use another --state dir"
        )


def load_trainer(artifact_dir: Path | str, *, backend: str = "ort", device: str = "auto", threads: Optional[int] = None) -> Trainer:
    """The trainer for ``backend`` (``ort`` or ``torch``)."""
    if backend == "ort":
        return OrtTrainer(artifact_dir, device=device, threads=threads)
    if backend == "torch":
        from edge_agent.torch_trainer import TorchTrainer

        return TorchTrainer(artifact_dir, device=device, threads=threads)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
