"""Requests in, responses out: the checks and translations between protobuf messages and plain objects.

Everything here is about one message: whether its fields can be used, what
image it declares (from the header, before decoding), the decoded payload a
job carries, and the LabelResponse built from an answer or a failure. Bytes
that are not a request at all reach the servicer as UndecodableRequest, so they
get INVALID_ARGUMENT and a counted log line instead of a traceback each.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from core.groups import GroupError, GroupSpec, resolve_groups
from core.labels import TeacherLabels
from protos import teacher_pb2
from teacher_server.codec import FrameError, check_size, decode_encoded, decode_raw, encode_label_map, encoded_size
from teacher_server.jobs import Job

UNAUTHENTICATED = "missing or invalid bearer token for this camera"
GARBAGE = "the request is not a valid jitnet.teacher.v1 protobuf message; use the generated stubs of protos/teacher.proto"
#: Longest camera id and group name accepted (they are echoed in answers and logs).
MAX_CAMERA_ID_CHARS = 128
MAX_GROUP_NAME_CHARS = 64
#: Error messages are cut here, so echoed input can never grow the status past gRPC's metadata limit.
MAX_MESSAGE_CHARS = 512


class UndecodableRequest:
    """What the server's deserializer hands the servicer for bytes that are not the request message."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.camera_id = ""
        self.frame_index = 0


def clip(text: str, limit: int = 64) -> str:
    """`text` for an error message: at most `limit` characters, marked when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Failure(Exception):
    """A request ends with this status; retry_after_s goes into the trailing metadata (or the inline error).

    `held` is a LimitExceeded whose refusal is to be held back before it is sent
    (the caller ignored earlier hints; TeacherServicer.hold_back).
    """

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: Optional[float] = None,
                 held: Any = None) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.held = held


@dataclass
class LabelPayload:
    """What a job carries into the batch: a decoded frame and what to label in it."""

    frame: np.ndarray
    spec: GroupSpec
    score_threshold: Optional[float]


def check_fields(request: teacher_pb2.LabelRequest) -> None:
    """The request's names are short enough to be looked up, echoed and logged (INVALID_ARGUMENT if not)."""
    if len(request.camera_id) > MAX_CAMERA_ID_CHARS:
        raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                      f"camera_id has {len(request.camera_id)} characters; at most {MAX_CAMERA_ID_CHARS} are accepted")
    for name in request.groups:
        if len(name) > MAX_GROUP_NAME_CHARS:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                          f"group name {clip(name)!r} is longer than {MAX_GROUP_NAME_CHARS} characters; see GetInfo for the names")


def frame_size(request: teacher_pb2.LabelRequest, max_pixels: int) -> tuple[int, int]:
    """(height, width) the request's image declares, checked against the pixel limit before any decoding."""
    try:
        kind = request.WhichOneof("image")
        if kind == "encoded":
            if not request.encoded:
                raise FrameError("empty frame: no image bytes were sent")
            height, width = encoded_size(request.encoded)
        elif kind == "raw":
            height, width = request.raw.height, request.raw.width
        else:
            raise FrameError("empty frame: the request carries no image (set `encoded` or `raw`)")
        check_size(height, width, max_pixels)
    except FrameError as exc:
        raise Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return height, width


def parse_options(request: teacher_pb2.LabelRequest) -> tuple[GroupSpec, Optional[float]]:
    """The groups and score threshold asked for, checked (INVALID_ARGUMENT) before the frame costs anything."""
    check_fields(request)
    try:
        spec = resolve_groups(list(request.groups))
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise FrameError(f"score_threshold must be in [0, 1], got {threshold}")
    except (FrameError, GroupError) as exc:
        raise Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return spec, threshold


def decode_frame(request: teacher_pb2.LabelRequest, max_pixels: int) -> tuple[np.ndarray, float]:
    """The request's image as RGB uint8 (H, W, 3) and the seconds decoding took (INVALID_ARGUMENT if it cannot be used)."""
    start = time.perf_counter()
    try:
        kind = request.WhichOneof("image")
        if kind == "encoded":
            frame = decode_encoded(request.encoded, max_pixels)
        elif kind == "raw":
            raw = request.raw
            frame = decode_raw(raw.data, raw.height, raw.width, raw.channels, max_pixels)
        else:
            raise FrameError("empty frame: the request carries no image (set `encoded` or `raw`)")
    except FrameError as exc:
        raise Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return frame, time.perf_counter() - start


def parse_request(request: teacher_pb2.LabelRequest, max_pixels: int) -> tuple[LabelPayload, float]:
    """Options and frame together; returns the payload and the decode time in seconds."""
    spec, threshold = parse_options(request)
    frame, decode_s = decode_frame(request, max_pixels)
    return LabelPayload(frame, spec, threshold), decode_s


def retry_after_ms(seconds: float) -> int:
    """The wire's hint: whole milliseconds, never 0 for a real hint."""
    return int(seconds * 1000) + 1


def label_response(request: Any, job: Job, result: TeacherLabels, start: float, decode_s: float) -> teacher_pb2.LabelResponse:
    """The answer for `request`, with where the time went."""
    encode_start = time.perf_counter()
    png = encode_label_map(result.label_map)
    now = time.perf_counter()
    height, width = result.label_map.shape
    queue_s = (job.started_at - job.enqueued_at) if job.started_at is not None else 0.0
    return teacher_pb2.LabelResponse(
        camera_id=request.camera_id,
        frame_index=request.frame_index,
        height=height,
        width=width,
        label_map_png=png,
        groups=list(result.groups),
        instances=[
            teacher_pb2.Instance(
                box=teacher_pb2.Box(x0=i.box[0], y0=i.box[1], x1=i.box[2], y1=i.box[3]),
                group=i.group,
                group_index=i.group_index,
                score=i.score,
                class_name=i.class_name,
            )
            for i in result.instances
        ],
        model_name=result.model_name,
        model_version=result.model_version,
        timings=teacher_pb2.Timings(
            decode_ms=decode_s * 1e3,
            queue_ms=queue_s * 1e3,
            inference_ms=result.timings.get("inference_ms", 0.0),
            postprocess_ms=result.timings.get("postprocess_ms", 0.0),
            encode_ms=(now - encode_start) * 1e3,
            total_ms=(now - start) * 1e3,
            batch_size=job.batch_size,
        ),
        stride_stretch=job.stride_stretch if job.stride_stretch > 1.0 else 0.0,
    )


def error_response(request: Any, failure: Failure) -> teacher_pb2.LabelResponse:
    """A stream's inline answer for a frame that failed (the stream goes on)."""
    retry_ms = retry_after_ms(failure.retry_after_s) if failure.retry_after_s is not None else 0
    return teacher_pb2.LabelResponse(
        camera_id=request.camera_id,
        frame_index=request.frame_index,
        error=teacher_pb2.Error(code=failure.code.value[0], message=failure.message, retry_after_ms=retry_ms),
    )


def add_to_server(servicer: Any, server: grpc.Server) -> None:
    """Register the Teacher service like the generated add_TeacherServicer_to_server, except that
    bytes which are not the request message reach the servicer as UndecodableRequest (so they get
    INVALID_ARGUMENT and a counted log line, not INTERNAL and a traceback per request)."""

    def load(message_cls: Any) -> Any:
        def deserialize(data: bytes) -> Any:
            try:
                return message_cls.FromString(data)
            except DecodeError:
                return UndecodableRequest(len(data))

        return deserialize

    handlers = {
        "Label": grpc.unary_unary_rpc_method_handler(
            servicer.Label, request_deserializer=load(teacher_pb2.LabelRequest),
            response_serializer=teacher_pb2.LabelResponse.SerializeToString),
        "LabelStream": grpc.stream_stream_rpc_method_handler(
            servicer.LabelStream, request_deserializer=load(teacher_pb2.LabelRequest),
            response_serializer=teacher_pb2.LabelResponse.SerializeToString),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetInfo, request_deserializer=load(teacher_pb2.InfoRequest),
            response_serializer=teacher_pb2.InfoResponse.SerializeToString),
    }
    name = teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
