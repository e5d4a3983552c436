"""A real teacher server with --policy need: old agents (no need field) and new ones are both answered."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from core.need import NeedSignal
from edge_agent.teacher_client import TeacherClient, encode_frame, labels_from_response
from protos import teacher_pb2, teacher_pb2_grpc
from teacher_server.server import start_server
from tests.edge_agent.agent_helpers import clip_frames
from tests.teacher_server.teacher_helpers import yolo_backend


@pytest.fixture(scope="module")
def need_server():
    handle = start_server(yolo_backend(), port=0, max_batch=4, max_delay_ms=5, warmup=False, policy="need")
    yield handle
    handle.stop(grace=5)


def test_a_request_with_only_the_old_fields_is_answered_by_a_need_server(need_server):
    frame = clip_frames(1)[0]
    request = teacher_pb2.LabelRequest(camera_id="old-agent", frame_index=7, groups=["person"],
                                       **encode_frame(frame, "jpeg"))
    assert not request.HasField("need")
    with grpc.insecure_channel(need_server.url.replace("grpc://", "")) as channel:
        response = teacher_pb2_grpc.TeacherStub(channel).Label(request, timeout=60)
    assert response.frame_index == 7 and not response.HasField("error")
    assert response.stride_stretch == 0.0  # nothing was waiting: no stretch
    labels = labels_from_response(response)
    assert labels.label_map.shape == frame.shape[:2] and labels.stride_stretch == 1.0
    assert (labels.label_map == 1).any()  # vtest's first frame has pedestrians


def test_a_client_sending_its_need_gets_the_same_labels(need_server):
    frame = clip_frames(1)[0]
    with TeacherClient(need_server.url, camera_id="new-agent") as client:
        plain = client.label(frame, ["person"], frame_index=0)
        needy = client.label(frame, ["person"], frame_index=8,
                             need=NeedSignal(0.31, 0.8, failed=True, stride=8, frames_since_teacher=8))
        request = client.request(frame, ["person"], frame_index=8, need=NeedSignal(None, 0.9, stride=8))
    assert np.array_equal(plain.label_map, needy.label_map)
    assert needy.stride_stretch == 1.0
    assert request.need.threshold == pytest.approx(0.9) and not request.need.HasField("accuracy")
    assert need_server.batcher.policy == "need"
