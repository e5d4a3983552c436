"""The ONNX Runtime training backend: JITNet from an artifact directory, never torch."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from core.manifest import ArtifactError, load_manifest
from edge_agent.nchwc import nchwc_block_size, nchwc_graphs
from edge_agent.inference_graph import with_uint8_io
from edge_agent.state import SnapshotUnusable
from edge_agent.student import (StepResult, TrainBatch, check_image, restore_snapshot, save_snapshot, stage_snapshot,
                                to_nchw)

log = logging.getLogger(__name__)


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
        self._bound_hw: tuple[int, int] | None = None
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

    def _load(self, checkpoint: Path, *, snapshot: Optional[Path] = None) -> None:
        """Load ``checkpoint`` with the artifacts' graphs: theirs, or a ``snapshot``'s from a state directory.

        The artifacts' own checkpoint loaded when this trainer was built, so a
        snapshot that fails here is the snapshot's fault (SnapshotUnusable),
        not the artifacts' (ArtifactError, "re-export them").
        """
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
            if snapshot is not None:
                raise SnapshotUnusable(f"ONNX Runtime could not load its checkpoint ({exc})") from exc
            raise ArtifactError(
                f"ONNX Runtime could not load the artifacts in {d} ({exc}); "
                f"re-create them with: jitnet export --out {d}"
            ) from exc
        params = self.state.parameters
        if "logits.bias" in params:  # the head's bias: one value per class it produces
            self._check_head(int(params["logits.bias"].data.shape[0]), "checkpoint", snapshot)
        self.optimizer.set_learning_rate(m.optimizer_learning_rate)
        self.module.train()
        self._bind_inference()

    def _check_head(self, produced: int, where: str, snapshot: Optional[Path] = None) -> None:
        """Refuse a head whose class count is not the manifest's.

        A manifest edited (or copied) to list more classes than the network's
        last layer has would train on labels the head cannot produce: the
        student silently never learns them (accuracy ~0).  Fewer would crash
        in the loss mid-run.  Either way the artifacts must be exported again.
        """
        m, d = self.manifest, self.artifact_dir
        if produced == m.num_classes:
            return
        if snapshot is not None:
            raise SnapshotUnusable(f"its {where} has a head for {produced} classes, the artifacts' for {m.num_classes}")
        raise ArtifactError(
            f"{d}/manifest.json lists {m.num_classes} classes {m.class_names} but the model's {where} produces "
            f"{produced}: the manifest does not belong to this model; re-export the artifacts with: "
            f"jitnet export --classes {','.join(m.class_names[1:])} --out {d}"
        )

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
        each update (see :func:`nchwc_graphs`).  Two sessions share those
        buffers: the per-frame one with uint8 in and class ids out
        (:mod:`edge_agent.inference_graph`), and one that returns logits,
        built only when someone asks for logits.  On CUDA the eval graph
        (which reads the live parameters by construction) is used instead.
        """
        ort, m, d = self._ort, self.manifest, self.artifact_dir
        self._session = self._logits_session = None
        self._pack = None
        self._packed_at = -1
        self._labels_out: dict[tuple[int, int], tuple[np.ndarray, object]] = {}
        if self.device != "cpu":
            return
        import onnx

        model = onnx.load(str(m.path(d, "inference")))
        logits = next((o for o in model.graph.output if o.name == "logits"), None)
        dims = logits.type.tensor_type.shape.dim if logits is not None else []
        if len(dims) == 4 and dims[1].HasField("dim_value"):  # (N, classes, H, W) with a fixed class count
            self._check_head(dims[1].dim_value, "inference graph")
        block = nchwc_block_size()
        self._param_views = []
        self._pack_outputs: list = []
        if block:
            try:
                nchwc, pack = nchwc_graphs(model, block)
                self._pack = ort.InferenceSession(
                    pack.SerializeToString(), self._options(), providers=["CPUExecutionProvider"]
                )
                self._pack_binding = self._pack.io_binding()
                self._session, self._binding = self._bound_session(with_uint8_io(nchwc))
                self._student_graph = nchwc
            except Exception as exc:  # a slower graph, never a failure
                log.warning("NCHWc inference graph failed (%s); using the plain one", exc)
                self._session = self._pack = None
                self._pack_outputs = []
        if self._session is None:
            self._session, self._binding = self._bound_session(with_uint8_io(model))
            self._student_graph = model

    def _bound_session(self, model):
        """An inference session over ``model`` whose parameter inputs are the live buffers."""
        ort = self._ort
        session = ort.InferenceSession(model.SerializeToString(), self._options(), providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        wanted = {i.name for i in session.get_inputs()}
        pack_wanted = {i.name for i in self._pack.get_inputs()} if self._pack else set()
        first = not self._param_views
        for name, param in self.state.parameters:
            view = param.data
            self._param_views.append(view)  # keeps the buffer referenced
            value = ort.OrtValue.ortvalue_from_numpy(view)
            if name in wanted:
                binding.bind_ortvalue_input(name, value)
            if first and name in pack_wanted:
                self._pack_binding.bind_ortvalue_input(name, value)
        if self._pack is not None:
            if first:
                for out in self._pack.get_outputs():
                    buffer = ort.OrtValue.ortvalue_from_shape_and_type(out.shape, np.float32)
                    self._pack_outputs.append((out.name, buffer))
                    self._pack_binding.bind_ortvalue_output(out.name, buffer)
            for name, buffer in self._pack_outputs:
                if name in wanted:
                    binding.bind_ortvalue_input(name, buffer)
        return session, binding

    def _refresh_packed(self) -> None:
        if self._pack is not None and self._packed_at != self._updates:
            self._pack.run_with_iobinding(self._pack_binding)
            self._packed_at = self._updates

    # -- inference and training --------------------------------------
    @property
    def version(self) -> int:
        """Changes with every optimizer step: a prediction made at one version stays valid until the next."""
        return self._updates

    def predict_logits(self, image: np.ndarray) -> np.ndarray:
        """(classes, H, W) logits with the current weights (evaluation and tests; the agent uses predict)."""
        check_image(image, self.manifest.stride)
        x = to_nchw(image)
        if self._session is None:
            return self._eval_logits(x)
        if self._logits_session is None:
            self._logits_session, self._logits_binding = self._bound_session(self._student_graph)
        self._refresh_packed()
        self._logits_binding.bind_cpu_input("image", x)
        self._logits_binding.bind_output("logits", "cpu")
        self._logits_session.run_with_iobinding(self._logits_binding)
        return self._logits_binding.copy_outputs_to_cpu()[0][0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class per pixel: uint8 HWC in, uint8 ids out, into a buffer kept per frame size.

        The caller gets its own copy of that buffer (a few hundred kB at most), so
        predictions kept across frames never change under it.
        """
        check_image(image, self.manifest.stride)
        if self._session is None:
            return self._eval_logits(to_nchw(image)).argmax(0).astype(np.uint8)
        self._refresh_packed()
        hw = image.shape[:2]
        out = self._labels_out.get(hw)
        if out is None:
            array = np.empty((1, *hw), np.uint8)
            out = self._labels_out[hw] = (array, self._ort.OrtValue.ortvalue_from_numpy(array))
            self._binding.bind_ortvalue_output("labels", out[1])
        elif self._bound_hw != hw:
            self._binding.bind_ortvalue_output("labels", out[1])
        self._bound_hw = hw
        self._binding.bind_cpu_input("image_u8", np.ascontiguousarray(image)[None])
        self._session.run_with_iobinding(self._binding)
        return out[0][0].copy()

    def _eval_logits(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[2:]
        self.module.eval()
        try:
            _, logits = self.module(x, np.zeros((1, h, w), np.int64), np.zeros((1, h, w), np.float32))
        finally:
            self.module.train()
        return logits[0]

    def prepare(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> TrainBatch:
        """Validate and convert one lesson once; every step on it reuses the result."""
        return TrainBatch.of(image, labels, pixel_weights, self.manifest)

    def train_step(self, image: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> StepResult:
        """One SGD-with-momentum step: forward, backward, update."""
        return self.step(self.prepare(image, labels, pixel_weights))

    def step(self, batch: TrainBatch) -> StepResult:
        """One SGD-with-momentum step on a prepared batch."""
        loss, logits = self.module(batch.x, batch.labels, batch.weights)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        self.steps += 1
        self._updates += 1
        return StepResult(float(loss), logits[0])

    # -- persistence -------------------------------------------------------
    def save(self, state_dir: Path | str) -> Path:
        """Snapshot weights and optimizer state (momentum) atomically."""

        return save_snapshot(self, state_dir, self._write_state)

    def stage(self, state_dir: Path | str) -> "tuple[Path, dict]":
        """Copy weights and optimizer state into a staging folder (see SnapshotWriter)."""
        return stage_snapshot(self, state_dir, self._write_state)

    def _write_state(self, folder: Path) -> None:
        self.api.CheckpointState.save_checkpoint(self.state, str(folder / "checkpoint"), include_optimizer_state=True)

    def restore(self, state_dir: Path | str) -> bool:
        """Load the newest intact snapshot; False when there is none."""
        def load(folder: Path) -> None:
            before = dict(self.__dict__)
            try:  # all or nothing: a snapshot that fails half-way leaves the trainer as it was
                self._load(folder / "checkpoint", snapshot=folder)
            except BaseException:
                self.__dict__.clear()
                self.__dict__.update(before)
                raise
            self._updates += 1  # other weights: predictions cached by version are stale

        return restore_snapshot(self, state_dir, load)
