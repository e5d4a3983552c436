"""The agent's side of the teacher: label(frame, groups) over gRPC.

Deliberately light (grpc, protobuf, numpy, OpenCV; never torch) so it runs on
the edge device. It retries what is worth retrying (UNAVAILABLE, and
RESOURCE_EXHAUSTED: after the server's retry-after hint, or with back-off when
there is none, e.g. gRPC's own call limit; only a message over the size limit
is final) within the caller's deadline, and otherwise raises a typed error, so the agent can keep
segmenting with its student while the teacher is away.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import cv2
import grpc
import numpy as np

from core.geometry import check_frame
from core.labels import RETRY_AFTER_KEY, Instance, TeacherLabels
from core.need import NeedSignal
# The errors belong to the agent's Teacher protocol; they are raised here (and importable from here).
from edge_agent.teacher import TeacherError, TeacherRejected, TeacherTimeout, TeacherUnavailable
from protos import teacher_pb2, teacher_pb2_grpc

log = logging.getLogger(__name__)


#: The Ray engine's Serve application name (teacher_server.ray_engine.APP_NAME).
DEFAULT_APPLICATION = "jitnet-teacher"

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
_IDLE, _CONNECTING = grpc.ChannelConnectivity.IDLE.value[0], grpc.ChannelConnectivity.CONNECTING.value[0]


def _parse_url(url: str) -> tuple[str, Optional[bool]]:
    """'grpc://h:p' -> (h:p, False); 'grpcs://h:p' -> (h:p, True); 'h:p' -> (h:p, None)."""
    for scheme, tls in (("grpcs://", True), ("grpc://", False)):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/"), tls
    return url, None


def encode_frame(frame_rgb: np.ndarray, encoding: str, jpeg_quality: int = 90) -> dict[str, Any]:
    """The image fields of a LabelRequest for an RGB uint8 frame (checked by core.geometry.check_frame)."""
    frame_rgb = check_frame(frame_rgb)
    if encoding == "raw":
        h, w, c = frame_rgb.shape
        return {"raw": teacher_pb2.RawImage(data=np.ascontiguousarray(frame_rgb).tobytes(), height=h, width=w, channels=c)}
    bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif encoding == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"unknown encoding {encoding!r}; use 'jpeg', 'png' or 'raw'")
    if not ok:
        raise ValueError(f"could not {encoding}-encode the frame")
    return {"encoded": buf.tobytes()}


def shrink_to_max_side(frame_rgb: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """The frame scaled down (INTER_AREA) so its longest side is at most ``max_side``; as is when it fits."""
    h, w = frame_rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return frame_rgb
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(frame_rgb, size, interpolation=cv2.INTER_AREA)


def upsample_labels(labels: TeacherLabels, frame_hw: tuple[int, int]) -> TeacherLabels:
    """Labels for a shrunk frame brought back to the frame's resolution (nearest label, boxes scaled)."""
    h, w = labels.label_map.shape
    fh, fw = frame_hw
    sx, sy = fw / w, fh / h
    labels.label_map = cv2.resize(labels.label_map, (fw, fh), interpolation=cv2.INTER_NEAREST)
    labels.instances = [
        Instance(box=(i.box[0] * sx, i.box[1] * sy, i.box[2] * sx, i.box[3] * sy), group=i.group,
                 group_index=i.group_index, score=i.score, class_name=i.class_name)
        for i in labels.instances
    ]
    return labels


def labels_from_response(response: teacher_pb2.LabelResponse) -> TeacherLabels:
    """Decode a LabelResponse (also usable on LabelStream answers without an error)."""
    label_map = cv2.imdecode(np.frombuffer(response.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)
    if label_map is None or label_map.ndim != 2 or label_map.shape != (response.height, response.width):
        raise TeacherError("the teacher sent a label map that is not a (height, width) 8-bit PNG")
    t = response.timings
    return TeacherLabels(
        frame_index=int(response.frame_index),
        label_map=label_map,
        instances=[
            Instance(
                box=(i.box.x0, i.box.y0, i.box.x1, i.box.y1),
                group=i.group,
                group_index=int(i.group_index),
                score=float(i.score),
                class_name=i.class_name,
            )
            for i in response.instances
        ],
        groups=tuple(response.groups),
        model_name=response.model_name,
        model_version=response.model_version,
        timings={
            "decode_ms": t.decode_ms,
            "queue_ms": t.queue_ms,
            "inference_ms": t.inference_ms,
            "postprocess_ms": t.postprocess_ms,
            "encode_ms": t.encode_ms,
            "total_ms": t.total_ms,
            "batch_size": float(t.batch_size),
        },
        stride_stretch=max(1.0, float(response.stride_stretch)),
    )


def need_message(need: NeedSignal) -> teacher_pb2.StudentNeed:
    """The wire form of the student's need (accuracy left unset before the first teacher frame)."""
    msg = teacher_pb2.StudentNeed(threshold=float(need.threshold), failed=bool(need.failed),
                                  stride=max(0, int(need.stride)), frames_since_teacher=max(0, int(need.frames_since_teacher)))
    if need.accuracy is not None:
        msg.accuracy = float(need.accuracy)
    return msg


def check_answer(labels: TeacherLabels, groups: Sequence[str]) -> None:
    """Refuse an answer the student cannot learn from: groups in another order, labels beyond them.

    Raised as TeacherRejected, so the agent counts a failing teacher (and backs
    off) instead of training on mislabelled pixels or crashing on them.
    """
    if [g.strip().lower() for g in labels.groups] != [g.strip().lower() for g in groups]:
        raise TeacherRejected(
            f"teacher answered groups {list(labels.groups)} for a request of {list(groups)}; "
            "its class groups differ from this student's (check `--classes` on both sides)"
        )
    top = int(labels.label_map.max()) if labels.label_map.size else 0
    if top > len(groups):
        raise TeacherRejected(f"teacher label map holds value {top} but only {len(groups)} group(s) were asked for")
    bad = [i.group_index for i in labels.instances if not 1 <= i.group_index <= len(groups)]
    if bad:
        raise TeacherRejected(f"teacher instances have group_index {bad}, outside 1..{len(groups)}")


def _too_large(code: grpc.StatusCode, details: str) -> bool:
    """gRPC's message-size refusal: RESOURCE_EXHAUSTED that resending the same request cannot fix."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details.lower()


def _retry_after_s(error: grpc.RpcError) -> Optional[float]:
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            try:
                return float(value) / 1000.0
            except ValueError:
                return None
    return None


class TeacherClient:
    """Label frames with a remote teacher (the agent's edge_agent.teacher.Teacher over gRPC).

    >>> with TeacherClient("grpc://127.0.0.1:50051", camera_id="cam0") as teacher:
    ...     labels = teacher.label(frame_rgb, ["person", "auto"], frame_index=42)

    Each answer's ``bytes_up`` / ``bytes_down`` (and a failure's, on the TeacherError) are what
    that call carried over the network, every attempt included (edge_agent.teacher says why).
    """

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        root_cert: Optional[Union[str, Path, bytes]] = None,
        camera_id: str = "cam0",
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        retry_delay_s: float = 0.1,
        max_retry_delay_s: float = 2.0,
        encoding: str = "jpeg",
        jpeg_quality: int = 90,
        max_side: Optional[int] = None,
        connect_timeout_s: float = 3.0,
        min_deadline_s: Optional[float] = 5.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        application: Optional[str] = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be >= 32 pixels (or None for full size), got {max_side}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if encoding not in ("jpeg", "png", "raw"):
            raise ValueError(f"unknown encoding {encoding!r}; use 'jpeg', 'png' or 'raw'")
        target, tls = _parse_url(url)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Reconnect soon after a teacher restarts instead of gRPC's default 1 s+ backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if root_cert is not None or tls:
            cert = root_cert if isinstance(root_cert, (bytes, type(None))) else Path(root_cert).read_bytes()
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=cert), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._stub = teacher_pb2_grpc.TeacherStub(self._channel)
        # Connectivity as gRPC reports it: a black-holed address stays CONNECTING for
        # ~20 s per attempt, so calls wait at most connect_timeout_s for READY.
        self.connect_timeout_s = float(connect_timeout_s)
        # Calls without a deadline wait max(min_deadline_s, 8x the usual latency), at most timeout_s:
        # a link that goes silent mid-call (packets dropped, no RST) costs seconds, not timeout_s.
        # A timeout doubles that bound, so a teacher that became slower is waited for again.
        self.min_deadline_s = min_deadline_s
        self._usual_latency_s: Optional[float] = None
        #: Longest side of what is sent (None = full size); labels come back upsampled to the frame.
        self.max_side = max_side
        self.url = url
        self.camera_id = camera_id
        self.timeout_s = float(timeout_s)
        self.max_attempts = int(max_attempts)
        self.retry_delay_s = float(retry_delay_s)
        self.max_retry_delay_s = float(max_retry_delay_s)
        self.encoding = encoding
        self.jpeg_quality = int(jpeg_quality)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        #: Ray Serve application name (`application` metadata); None: sent only once a proxy asks for it.
        self.application = application
        if application:
            self._metadata += (("application", application),)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    # -- calls -----------------------------------------------------------------------------
    def label(
        self,
        frame_rgb: np.ndarray,
        groups: Sequence[str],
        *,
        frame_index: int,
        score_threshold: Optional[float] = None,
        deadline_s: Optional[float] = None,
        need: Optional[NeedSignal] = None,
    ) -> TeacherLabels:
        """Teacher labels for one RGB uint8 frame; `deadline_s` bounds the whole call, retries included.

        Raises TeacherRejected (do not resend this request), TeacherTimeout or
        TeacherUnavailable (keep going without the teacher, try again later).
        """
        frame_rgb = np.asarray(frame_rgb)
        full_hw = frame_rgb.shape[:2]
        sent = shrink_to_max_side(frame_rgb, self.max_side)
        request = self.request(sent, groups, frame_index=frame_index, score_threshold=score_threshold, need=need)
        labels = self.send(request, deadline_s=deadline_s)
        if sent.shape[:2] != full_hw and labels.label_map.shape == sent.shape[:2]:
            labels = upsample_labels(labels, full_hw)
        return labels

    def _wait_connected(self, timeout_s: float) -> None:
        """Let a call go once the channel is READY or refused (that fails fast and is retried).

        A black-holed address (packets dropped, or a peer that never speaks HTTP/2)
        keeps the channel CONNECTING, where a call would hang until its deadline:
        that fails after ``timeout_s`` instead.
        """
        # grpc's public subscribe() runs a polling thread that raises once the channel is
        # closed; the core channel's own calls (what that thread uses) run here instead.
        core = getattr(self._channel, "_channel", None)
        if core is None or not hasattr(core, "check_connectivity_state"):
            return
        end = time.monotonic() + timeout_s
        state = core.check_connectivity_state(True)  # True: an IDLE channel starts connecting
        while state in (_IDLE, _CONNECTING):
            left = end - time.monotonic()
            if left <= 0:
                raise TeacherUnavailable(
                    f"teacher at {self.url} is not reachable (still connecting after {timeout_s:.1f} s); "
                    "check the address, that `jitnet teacher` runs there and the network between",
                    grpc.StatusCode.UNAVAILABLE,
                )
            core.watch_connectivity_state(state, time.time() + min(left, 0.2))
            state = core.check_connectivity_state(False)

    def send(self, request: teacher_pb2.LabelRequest, *, deadline_s: Optional[float] = None) -> TeacherLabels:
        """label() for a prepared LabelRequest (see request()), e.g. one encoded once and sent again.

        The answer (or the TeacherError) carries the bytes of every attempt: what the network carried.
        """
        carried = [0, 0]  # bytes up, bytes down over this call's attempts
        try:
            labels = self._send(request, deadline_s, carried)
        except TeacherError as exc:
            exc.bytes_up, exc.bytes_down = carried
            raise
        labels.bytes_up, labels.bytes_down = carried
        return labels

    def _send(self, request: teacher_pb2.LabelRequest, deadline_s: Optional[float], carried: list[int]) -> TeacherLabels:
        frame_index = request.frame_index
        size = request.ByteSize()
        adaptive = deadline_s is None and self.min_deadline_s is not None and self._usual_latency_s is not None
        if deadline_s is not None:
            budget = float(deadline_s)
        elif adaptive:
            budget = min(self.timeout_s, max(self.min_deadline_s, 8.0 * self._usual_latency_s))
        else:
            budget = self.timeout_s
        start = time.monotonic()
        end = start + budget
        attempt = 0
        while True:
            attempt += 1
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TeacherTimeout(
                    f"teacher at {self.url} did not answer frame {frame_index} within {budget:.2f} s",
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            self._wait_connected(min(self.connect_timeout_s, remaining))
            try:
                carried[0] += size
                response = self._stub.Label(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
                retry_after = _retry_after_s(error)
                if self._use_default_application(code, details):
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    if adaptive:
                        self._usual_latency_s = max(2.0 * self._usual_latency_s, budget / 4.0)
                    raise TeacherTimeout(
                        f"teacher at {self.url} did not answer frame {frame_index} within {budget:.2f} s: {details}",
                        code,
                        details,
                    ) from None
                # Back-pressure, with a hint or without (gRPC's own concurrent-call limit gives none):
                # wait and resend; only a message over the size limit is final.
                retryable = code == grpc.StatusCode.UNAVAILABLE or (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED and not _too_large(code, details)
                )
                if not retryable:
                    cls = TeacherUnavailable if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) else TeacherRejected
                    raise cls(f"teacher rejected frame {frame_index}: {code.name}: {details}", code, details) from None
                backoff = min(self.max_retry_delay_s, self.retry_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                wait = max(backoff, retry_after or 0.0)
                if attempt >= self.max_attempts or time.monotonic() + wait >= end:
                    raise TeacherUnavailable(
                        f"teacher at {self.url} unavailable after {attempt} attempt(s): {code.name}: {details}",
                        code,
                        details,
                        retry_after,
                    ) from None
                log.debug("teacher %s: %s, retrying in %.3f s", self.url, code.name, wait)
                time.sleep(wait)
                continue
            carried[1] += response.ByteSize()
            labels = labels_from_response(response)
            check_answer(labels, request.groups)
            labels.latency_s = time.monotonic() - start
            labels.attempts = attempt
            u = self._usual_latency_s
            self._usual_latency_s = labels.latency_s if u is None else 0.8 * u + 0.2 * labels.latency_s
            return labels

    def submit(self, frame_rgb: np.ndarray, groups: Sequence[str], *, frame_index: int,
               score_threshold: Optional[float] = None, deadline_s: Optional[float] = None,
               need: Optional[NeedSignal] = None) -> "Future[TeacherLabels]":
        """label() on a background thread, so the agent keeps segmenting while the teacher works."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="teacher-client")
            return self._executor.submit(self.label, np.array(frame_rgb, copy=True), list(groups),
                                         frame_index=frame_index, score_threshold=score_threshold,
                                         deadline_s=deadline_s, need=need)

    def info(self, *, deadline_s: Optional[float] = None) -> teacher_pb2.InfoResponse:
        """The server's model, version, class groups and limits."""
        try:
            try:
                return self._stub.GetInfo(teacher_pb2.InfoRequest(), timeout=deadline_s or self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as error:
                if not self._use_default_application(error.code(), error.details() or ""):
                    raise
            return self._stub.GetInfo(teacher_pb2.InfoRequest(), timeout=deadline_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            code = error.code()
            cls = TeacherUnavailable if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else TeacherRejected
            raise cls(f"teacher at {self.url}: {code.name}: {error.details()}", code, error.details() or "") from None

    def _use_default_application(self, code: grpc.StatusCode, details: str) -> bool:
        """A Ray Serve proxy with several applications answers NOT_FOUND without `application`
        metadata: from then on send the default application name (True: resend the call)."""
        if code != grpc.StatusCode.NOT_FOUND or self.application is not None or "application" not in details.lower():
            return False
        self.application = DEFAULT_APPLICATION
        self._metadata += (("application", DEFAULT_APPLICATION),)
        log.info("teacher at %s serves several applications; asking for %r", self.url, DEFAULT_APPLICATION)
        return True

    def stream(self, requests: Iterable[teacher_pb2.LabelRequest], *, timeout_s: Optional[float] = None) -> Iterable[teacher_pb2.LabelResponse]:
        """Raw LabelStream for callers that pipeline many frames on one connection."""
        return self._stub.LabelStream(iter(requests), timeout=timeout_s, metadata=self._metadata)

    def request(self, frame_rgb: np.ndarray, groups: Sequence[str], *, frame_index: int, score_threshold: Optional[float] = None,
                need: Optional[NeedSignal] = None) -> teacher_pb2.LabelRequest:
        """A LabelRequest for this camera (for stream())."""
        fields: dict[str, Any] = dict(
            camera_id=self.camera_id, frame_index=int(frame_index), groups=list(groups),
            **encode_frame(frame_rgb, self.encoding, self.jpeg_quality),
        )
        if score_threshold is not None:
            fields["score_threshold"] = float(score_threshold)
        if need is not None:
            fields["need"] = need_message(need)
        return teacher_pb2.LabelRequest(**fields)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        self._channel.close()

    def __enter__(self) -> "TeacherClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
