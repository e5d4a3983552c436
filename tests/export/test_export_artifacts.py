"""The artifact directory is complete, self-describing, and computes what PyTorch computes."""
import json

import cv2
import numpy as np
import onnx
import torch

from core.manifest import REQUIRED_ROLES, load_manifest
from edge_agent.trainer import load_trainer
from export.jitnet import JITNet, JITNetSpec
from tests.conftest import load_davis_frame


def _torch_model(artifacts):
    m = load_manifest(artifacts)
    model = JITNet(JITNetSpec(m.width, m.num_classes))
    with np.load(m.path(artifacts, "weights")) as npz:
        model.load_state_dict({k: torch.from_numpy(npz[k]) for k in npz.files})
    return model.eval()


def test_manifest_describes_the_artifacts(artifacts):
    m = load_manifest(artifacts)
    assert m.class_names == ["background", "person"]
    assert m.width == 0.5 and (m.input_height, m.input_width) == (128, 192)
    assert set(REQUIRED_ROLES) <= set(m.files)
    assert m.momentum == 0.9 and m.learning_rate == 0.01
    assert abs(m.optimizer_learning_rate - 0.1) < 1e-9  # lr / (1 - momentum): see export/artifacts.py
    assert m.versions["onnx"] == "1.17.0"
    raw = json.loads((artifacts / "manifest.json").read_text())
    assert raw["input_normalization"]["applied_in_graph"] is True


def test_graphs_have_no_op_without_a_cpu_gradient(artifacts):
    forbidden = {"Resize", "ConvTranspose", "DepthToSpace", "Upsample"}
    ops = {n.op_type for n in onnx.load(str(artifacts / "training_model.onnx")).graph.node}
    assert not ops & forbidden
    assert {"ConvGrad", "BatchNormalizationGrad"} <= ops


def test_ort_inference_equals_pytorch_on_a_real_frame_at_other_sizes(artifacts):
    trainer = load_trainer(artifacts, backend="ort")
    model = _torch_model(artifacts)
    frame, _ = load_davis_frame("dog", 0)
    for h, w in ((128, 192), (256, 448), (480, 864)):
        image = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        with torch.no_grad():
            ref = model(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)))[0].numpy()
        got = trainer.predict_logits(image)
        assert got.shape == ref.shape == (2, h, w)
        assert np.abs(got - ref).max() < 1e-4
