"""The client treats RESOURCE_EXHAUSTED as back-pressure (wait, resend), with or without a hint.

gRPC's own concurrent-call limit answers RESOURCE_EXHAUSTED with no retry-after;
an agent that took that for a rejection would stop asking a teacher that is
merely busy. The server here is a real gRPC server on localhost that refuses
the first calls like that and then answers.
"""
from __future__ import annotations

import threading
import time
from concurrent import futures

import cv2
import grpc
import numpy as np
import pytest

from core.labels import RETRY_AFTER_KEY
from edge_agent.teacher_client import TeacherClient, TeacherRejected, TeacherUnavailable
from protos import teacher_pb2, teacher_pb2_grpc


class _BusyTeacher(teacher_pb2_grpc.TeacherServicer):
    """Refuses the first `refuse` calls with RESOURCE_EXHAUSTED (`hint_ms` in the trailer, or none), then labels."""

    def __init__(self, refuse: int, hint_ms=None, details: str = "Concurrent RPC limit exceeded!") -> None:
        self.refuse, self.hint_ms, self.details = refuse, hint_ms, details
        self.calls: list[float] = []
        self.request_bytes: list[int] = []  # as received, every attempt
        self.response_bytes = 0
        self._lock = threading.Lock()

    def Label(self, request, context):
        with self._lock:
            self.calls.append(time.monotonic())
            self.request_bytes.append(request.ByteSize())
            n = len(self.calls)
        if n <= self.refuse:
            if self.hint_ms is not None:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(self.hint_ms)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.details)
        png = cv2.imencode(".png", np.zeros((4, 6), np.uint8))[1].tobytes()
        response = teacher_pb2.LabelResponse(camera_id=request.camera_id, frame_index=request.frame_index, height=4,
                                             width=6, label_map_png=png, groups=list(request.groups), model_name="busy")
        self.response_bytes = response.ByteSize()
        return response


@pytest.fixture
def serve():
    servers = []

    def start(servicer) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        teacher_pb2_grpc.add_TeacherServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"grpc://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


FRAME = np.zeros((4, 6, 3), np.uint8)


def test_resource_exhausted_without_a_hint_is_retried_with_back_off(serve) -> None:
    teacher = _BusyTeacher(refuse=3)
    with TeacherClient(serve(teacher), camera_id="cam", max_attempts=6, retry_delay_s=0.05) as client:
        labels = client.label(FRAME, ["person"], frame_index=4, deadline_s=20)
    assert labels.frame_index == 4 and labels.attempts == 4
    # Bytes are what the network carried: the request four times (as the server received it), one answer.
    assert len(teacher.request_bytes) == 4 and labels.bytes_up == sum(teacher.request_bytes)
    assert labels.bytes_down == teacher.response_bytes > 0
    # Waits between attempts, not a tight loop: 0.05, 0.1, 0.2 s doubled, each jittered to 50-100%.
    assert teacher.calls[-1] - teacher.calls[0] >= 0.5 * (0.05 + 0.1 + 0.2)


def test_resource_exhausted_with_a_hint_waits_at_least_the_hint(serve) -> None:
    teacher = _BusyTeacher(refuse=1, hint_ms=300)
    with TeacherClient(serve(teacher), camera_id="cam", max_attempts=3, retry_delay_s=0.01) as client:
        assert client.label(FRAME, ["person"], frame_index=1, deadline_s=20).attempts == 2
    assert teacher.calls[1] - teacher.calls[0] >= 0.3


def test_a_busy_teacher_past_the_attempts_is_unavailable_not_rejected(serve) -> None:
    teacher = _BusyTeacher(refuse=100)
    with TeacherClient(serve(teacher), camera_id="cam", max_attempts=3, retry_delay_s=0.01) as client:
        with pytest.raises(TeacherUnavailable) as info:
            client.label(FRAME, ["person"], frame_index=1, deadline_s=20)
    assert not isinstance(info.value, TeacherRejected)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A failed call still carried its three requests; nothing came back.
    assert len(teacher.request_bytes) == 3 and info.value.bytes_up == sum(teacher.request_bytes) > 0
    assert info.value.bytes_down == 0


def test_a_message_over_the_size_limit_is_rejected_at_once(serve) -> None:
    teacher = _BusyTeacher(refuse=100, details="Received message larger than max (5000000 vs. 4194304)")
    with TeacherClient(serve(teacher), camera_id="cam", max_attempts=5) as client:
        with pytest.raises(TeacherRejected):
            client.label(FRAME, ["person"], frame_index=1, deadline_s=20)
    assert len(teacher.calls) == 1
