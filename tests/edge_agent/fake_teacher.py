"""A real gRPC teacher on localhost whose answers a test chooses: bad labels, slow answers, recorded bytes.

It speaks protos/teacher.proto over a real grpc.server, so the agent and its
client are exercised exactly as against `jitnet teacher`; only the model is
replaced by a cheap rule (bright pixels are the first group) that tests can
bend: out-of-range label values, groups in another order, a delay per frame.
"""
from __future__ import annotations

import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import grpc
import numpy as np

from protos import teacher_pb2, teacher_pb2_grpc


@dataclass
class Seen:
    """One request as the server received it, and the size of what it sent back."""

    frame_index: int
    image_rgb: np.ndarray
    request_bytes: int
    response_bytes: int = 0


def bright_is_person(image_rgb: np.ndarray) -> np.ndarray:
    """The fake model: pixels brighter than the frame's 80th percentile are group 1."""
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    return (gray > np.percentile(gray, 80)).astype(np.uint8)


class FakeTeacher(teacher_pb2_grpc.TeacherServicer):
    def __init__(self, *, delay_s: float = 0.0, label_fn: Callable[[np.ndarray], np.ndarray] = bright_is_person,
                 groups: Optional[tuple[str, ...]] = None, label_offset: int = 0, refuse_every: int = 0) -> None:
        self.delay_s = delay_s
        self.label_fn = label_fn
        self.groups = groups  # None: echo the request's groups in its order
        self.label_offset = label_offset  # > 0: label values beyond the groups (a broken teacher)
        self.refuse_every = refuse_every  # > 0: every n-th call is refused RESOURCE_EXHAUSTED (busy: resend)
        self.seen: list[Seen] = []  # every call, refused ones included (response_bytes 0)
        self._lock = threading.Lock()

    def Label(self, request, context):
        image = cv2.imdecode(np.frombuffer(request.encoded, np.uint8), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        seen = Seen(int(request.frame_index), rgb, request.ByteSize())
        if self.refuse_every:
            with self._lock:
                self.seen.append(seen)
                refuse = len(self.seen) % self.refuse_every == 0
            if refuse:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy (a test teacher refusing every "
                              f"{self.refuse_every}th call)")
        if self.delay_s:
            time.sleep(self.delay_s)  # the model's compute time, not synchronisation
        label = self.label_fn(rgb)
        label = np.where(label > 0, label + self.label_offset, 0).astype(np.uint8)
        ok, png = cv2.imencode(".png", label)
        h, w = label.shape
        ys, xs = np.nonzero(label)
        instances = []
        if len(xs):
            instances.append(teacher_pb2.Instance(
                box=teacher_pb2.Box(x0=float(xs.min()), y0=float(ys.min()), x1=float(xs.max() + 1), y1=float(ys.max() + 1)),
                group=request.groups[0], group_index=1, score=0.9, class_name=request.groups[0]))
        response = teacher_pb2.LabelResponse(
            camera_id=request.camera_id, frame_index=request.frame_index, height=h, width=w,
            label_map_png=png.tobytes(), groups=list(self.groups or request.groups), instances=instances,
            model_name="fake", model_version="1")
        seen.response_bytes = response.ByteSize()
        if not self.refuse_every:
            with self._lock:
                self.seen.append(seen)
        return response

    def GetInfo(self, request, context):
        return teacher_pb2.InfoResponse(model_name="fake", model_version="1")


@dataclass
class Running:
    url: str
    port: int
    teacher: FakeTeacher
    server: grpc.Server = field(repr=False)

    def stop(self) -> None:
        self.server.stop(grace=0.5).wait()


def start_fake_teacher(teacher: Optional[FakeTeacher] = None, port: int = 0) -> Running:
    teacher = teacher or FakeTeacher()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    teacher_pb2_grpc.add_TeacherServicer_to_server(teacher, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return Running(f"grpc://127.0.0.1:{port}", port, teacher, server)


class BlackHoleProxy:
    """A TCP relay to a real server that can start dropping everything (a partition, a dead link).

    In black-hole mode connections stay open and accepted, but no byte passes in
    either direction: what a camera sees when a router drops its packets.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.black_hole = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.url = f"grpc://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self.black_hole.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.black_hole.is_set():
                continue  # dropped on the floor
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
