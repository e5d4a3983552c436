"""The gRPC servicer: wire messages <-> the batcher and labeler, nothing more.

Everything that decides (batching, fairness, backpressure, deadlines, the
labeling rule) lives in plain objects; this file only translates requests,
results and failures into protobuf messages and gRPC status codes.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from core.labels import RETRY_AFTER_KEY
from protos import teacher_pb2, teacher_pb2_grpc
from teacher_server.auth import TokenAuth
from teacher_server.batcher import DeadlineExpired, DynamicBatcher, Job, QueueFull, ShuttingDown
from teacher_server.codec import FrameError, check_size, decode_encoded, decode_raw, encode_label_map, encoded_size
from core.groups import GroupError, GroupSpec, known_groups, resolve_groups
from teacher_server.labeler import LabelResult
from teacher_server.limits import CallLimiter, LimitExceeded
from teacher_server.metrics import TeacherMetrics
from teacher_server.scheduling import need_from_request

log = logging.getLogger(__name__)

_UNAUTHENTICATED = "missing or invalid bearer token for this camera"
#: Longest camera id and group name accepted (they are echoed in answers and logs).
MAX_CAMERA_ID_CHARS = 128
MAX_GROUP_NAME_CHARS = 64
#: Error messages are cut here, so echoed input can never grow the status past gRPC's metadata limit.
MAX_MESSAGE_CHARS = 512
#: A stream that carried no frame for this long is ended (UNAVAILABLE: reconnect when there is work).
DEFAULT_STREAM_IDLE_S = 60.0
#: Undecodable requests are logged at most once per this many seconds, with a count.
_GARBAGE_LOG_INTERVAL_S = 10.0


class UndecodableRequest:
    """What the server's deserializer hands the servicer for bytes that are not the request message."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.camera_id = ""
        self.frame_index = 0


_GARBAGE = "the request is not a valid jitnet.teacher.v1 protobuf message; use the generated stubs of protos/teacher.proto"


class _Holds:
    """What one call holds of the limiter, given back exactly once (also when added after the call ended)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._releases: list = []
        self._closed = False

    def add(self, release: Any) -> None:
        with self._lock:
            if not self._closed:
                self._releases.append(release)
                return
        release()

    def close(self) -> None:
        with self._lock:
            self._closed, releases, self._releases = True, self._releases, []
        for release in releases:
            release()


def _clip(text: str, limit: int = 64) -> str:
    """`text` for an error message: at most `limit` characters, marked when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass
class LabelPayload:
    """What a job carries into the batch: a decoded frame and what to label in it."""

    frame: np.ndarray
    spec: GroupSpec
    score_threshold: Optional[float]


class _Failure(Exception):
    """A request ends with this status; retry_after_s goes into the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: Optional[float] = None) -> None:
        message = _clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def check_fields(request: teacher_pb2.LabelRequest) -> None:
    """The request's names are short enough to be looked up, echoed and logged (INVALID_ARGUMENT if not)."""
    if len(request.camera_id) > MAX_CAMERA_ID_CHARS:
        raise _Failure(grpc.StatusCode.INVALID_ARGUMENT,
                       f"camera_id has {len(request.camera_id)} characters; at most {MAX_CAMERA_ID_CHARS} are accepted")
    for name in request.groups:
        if len(name) > MAX_GROUP_NAME_CHARS:
            raise _Failure(grpc.StatusCode.INVALID_ARGUMENT,
                           f"group name {_clip(name)!r} is longer than {MAX_GROUP_NAME_CHARS} characters; see GetInfo for the names")


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
        raise _Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return height, width


def parse_request(request: teacher_pb2.LabelRequest, max_pixels: int) -> tuple[LabelPayload, float]:
    """Decode and validate; returns the payload and the decode time in seconds."""
    start = time.perf_counter()
    check_fields(request)
    try:
        spec = resolve_groups(list(request.groups))
        kind = request.WhichOneof("image")
        if kind == "encoded":
            frame = decode_encoded(request.encoded, max_pixels)
        elif kind == "raw":
            raw = request.raw
            frame = decode_raw(raw.data, raw.height, raw.width, raw.channels, max_pixels)
        else:
            raise FrameError("empty frame: the request carries no image (set `encoded` or `raw`)")
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise FrameError(f"score_threshold must be in [0, 1], got {threshold}")
    except (FrameError, GroupError) as exc:
        raise _Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return LabelPayload(frame, spec, threshold), time.perf_counter() - start


class TeacherServicer(teacher_pb2_grpc.TeacherServicer):
    """Label / LabelStream / GetInfo on top of a running DynamicBatcher."""

    def __init__(
        self,
        batcher: DynamicBatcher,
        *,
        model_name: str,
        model_version: str,
        default_score_threshold: float,
        metrics: TeacherMetrics,
        auth: Optional[TokenAuth] = None,
        max_pixels: int,
        max_message_bytes: int,
        limiter: Optional[CallLimiter] = None,
        stream_idle_s: Optional[float] = None,
    ) -> None:
        self.batcher = batcher
        #: Calls, streams and frame bytes held per camera and in total (None: only gRPC's own limit).
        self.limiter = limiter
        self.stream_idle_s = stream_idle_s
        self._garbage_lock = threading.Lock()
        self._garbage_count = 0
        self._garbage_logged_at = float("-inf")
        self.model_name = model_name
        self.model_version = model_version
        self.default_score_threshold = default_score_threshold
        self.metrics = metrics
        self.auth = auth
        self.max_pixels = max_pixels
        self.max_message_bytes = max_message_bytes
        self.shutting_down = threading.Event()

    # -- unary -----------------------------------------------------------------------------
    def Label(self, request: teacher_pb2.LabelRequest, context: grpc.ServicerContext) -> teacher_pb2.LabelResponse:
        start = time.perf_counter()
        if isinstance(request, UndecodableRequest):
            self._refuse_garbage(request, context)
        held = _Holds()
        try:
            try:
                check_fields(request)
                if not self._authorized(context, request.camera_id):
                    raise _Failure(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
                self._hold(held, None, stream=False)
                self._hold(held, request.camera_id, stream=False)
                job, decode_s = self._submit(request, context)
                context.add_callback(lambda: self.batcher.cancel(job))
                result = self._wait(job, context.time_remaining(), context)
            except _Failure as failure:
                self._abort(context, failure)
            response = self._response(request, job, result, start, decode_s)
            self._observe_delivery(context, time.perf_counter() - start)
            return response
        finally:
            held.close()

    # -- bidirectional stream ----------------------------------------------------------------
    def LabelStream(self, request_iterator: Iterator[teacher_pb2.LabelRequest], context: grpc.ServicerContext) -> Iterator[teacher_pb2.LabelResponse]:
        """One response per request, in request order; a bad frame gets an `error` response.

        The stream counts as one call of the server and of its camera (the first
        request's camera_id) while it is open; one that carries no frame for
        `stream_idle_s` is ended with UNAVAILABLE, so abandoned streams give their
        share back.
        """
        if not self._authorized(context, None):  # no valid token at all: refuse before reading
            self._abort(context, _Failure(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED))
        held = _Holds()
        context.add_callback(held.close)
        try:
            self._hold(held, None, stream=True)
        except _Failure as failure:
            held.close()
            self._abort(context, failure)
        # Items: ("job", request, job, t0, decode_s) | ("error", request, _Failure) | ("auth",) | ("end", failure)
        pending: queue.Queue = queue.Queue(maxsize=max(2, self.batcher.max_queue))
        live_jobs: set[Job] = set()
        lock = threading.Lock()
        last_activity = [time.monotonic()]

        def on_done() -> None:
            with lock:
                jobs = list(live_jobs)
            for job in jobs:
                self.batcher.cancel(job)

        context.add_callback(on_done)

        def put(item: tuple) -> bool:
            """Hand an item to the responder; False once the call is over (never block forever)."""
            while context.is_active():
                try:
                    pending.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            camera: Optional[str] = None
            try:
                for request in request_iterator:
                    t0 = time.perf_counter()
                    last_activity[0] = time.monotonic()
                    if isinstance(request, UndecodableRequest):
                        self._count_garbage(request)
                        if not put(("error", request, _Failure(grpc.StatusCode.INVALID_ARGUMENT, _GARBAGE))):
                            return
                        continue
                    try:
                        check_fields(request)
                    except _Failure as failure:
                        if not put(("error", request, failure)):
                            return
                        continue
                    if not self._authorized(context, request.camera_id):
                        put(("auth",))
                        return
                    if camera is None:
                        camera = request.camera_id
                        try:
                            self._hold(held, camera, stream=True)
                        except _Failure as failure:
                            put(("end", failure))
                            return
                    try:
                        job, decode_s = self._submit(request, context)
                    except _Failure as failure:
                        if failure.code == grpc.StatusCode.UNAVAILABLE:
                            put(("end", failure))
                            return
                        if not put(("error", request, failure)):
                            return
                        continue
                    with lock:
                        live_jobs.add(job)
                    if not put(("job", request, job, t0, decode_s)):
                        self.batcher.cancel(job)
                        return
            except Exception:  # noqa: BLE001 - the client went away; the stream is over
                log.debug("stream reader ended", exc_info=True)
            put(("end", None))

        reader = threading.Thread(target=read, name="teacher-stream-reader", daemon=True)
        reader.start()
        while True:
            try:
                item = pending.get(timeout=0.25)
            except queue.Empty:
                if not context.is_active():
                    return
                with lock:
                    idle = not live_jobs
                if self.shutting_down.is_set() and idle and pending.empty():
                    # An idle camera connection must not hold up a graceful shutdown.
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the teacher is shutting down; reconnect to another server")
                if (self.stream_idle_s is not None and idle and pending.empty()
                        and time.monotonic() - last_activity[0] > self.stream_idle_s):
                    held.close()
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  f"stream carried no frame for {self.stream_idle_s:g} s; open a new one when there is work")
                continue
            kind = item[0]
            if kind == "auth":
                self._abort(context, _Failure(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED))
            if kind == "end":
                if item[1] is not None:
                    self._abort(context, item[1])
                return
            if kind == "error":
                _, request, failure = item
                self.metrics.observe_request(failure.code.name)
                yield self._error_response(request, failure)
                continue
            _, request, job, t0, decode_s = item
            try:
                result = self._wait(job, context.time_remaining(), context)
            except _Failure as failure:
                self.metrics.observe_request(failure.code.name)
                yield self._error_response(request, failure)
                continue
            finally:
                with lock:
                    live_jobs.discard(job)
            response = self._response(request, job, result, t0, decode_s)
            self._observe_delivery(context, time.perf_counter() - t0)
            last_activity[0] = time.monotonic()
            yield response

    # -- info ------------------------------------------------------------------------------
    def GetInfo(self, request: teacher_pb2.InfoRequest, context: grpc.ServicerContext) -> teacher_pb2.InfoResponse:
        if isinstance(request, UndecodableRequest):
            self._count_garbage(request)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _GARBAGE)
        if not self._authorized(context, None):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
        return teacher_pb2.InfoResponse(
            model_name=self.model_name,
            model_version=self.model_version,
            groups=[teacher_pb2.GroupInfo(name=n, classes=list(c)) for n, c in known_groups().items()],
            default_score_threshold=self.default_score_threshold,
            max_batch_size=self.batcher.max_batch,
            max_queue=self.batcher.max_queue,
            max_message_bytes=self.max_message_bytes,
        )

    # -- helpers ---------------------------------------------------------------------------
    def _authorized(self, context: grpc.ServicerContext, camera_id: Optional[str]) -> bool:
        return self.auth is None or self.auth.allows(context.invocation_metadata(), camera_id)

    def _hold(self, held: _Holds, camera_id: Optional[str], *, stream: bool) -> None:
        """Count this call (camera None: before its camera is known) or its camera's share; over a limit -> _Failure."""
        limiter = self.limiter
        if limiter is None:
            return
        try:
            if camera_id is None:
                limiter.acquire_call()
                held.add(limiter.release_call)
            else:
                limiter.acquire_camera(camera_id, stream=stream)
                held.add(lambda: limiter.release_camera(camera_id, stream=stream))
        except LimitExceeded as exc:
            raise _Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s) from None

    def _abort(self, context: grpc.ServicerContext, failure: _Failure) -> None:
        """End the call with `failure` (counted; retry-after in the trailing metadata when there is one)."""
        self.metrics.observe_request(failure.code.name)
        if failure.retry_after_s is not None:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(failure.retry_after_s * 1000) + 1)),))
        context.abort(failure.code, failure.message)

    def _observe_delivery(self, context: grpc.ServicerContext, seconds: float) -> None:
        """An answer is OK only if its caller still waits for it: else DEADLINE_EXCEEDED or CANCELLED."""
        if context.is_active():
            self.metrics.observe_request(grpc.StatusCode.OK.name, seconds)
            return
        remaining = context.time_remaining()
        late = remaining is not None and remaining <= 0.0
        self.metrics.observe_request((grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED).name)

    def _count_garbage(self, request: UndecodableRequest) -> None:
        """One log line per interval for requests that are not protobuf, with how many there were."""
        with self._garbage_lock:
            self._garbage_count += 1
            now = time.monotonic()
            if now - self._garbage_logged_at < _GARBAGE_LOG_INTERVAL_S:
                return
            self._garbage_logged_at, count, self._garbage_count = now, self._garbage_count, 0
        log.warning("refused %d undecodable request(s) in the last %g s (latest: %d bytes)",
                    count, _GARBAGE_LOG_INTERVAL_S, request.nbytes)

    def _refuse_garbage(self, request: UndecodableRequest, context: grpc.ServicerContext) -> None:
        self._count_garbage(request)
        self._abort(context, _Failure(grpc.StatusCode.INVALID_ARGUMENT, _GARBAGE))

    def _submit(self, request: teacher_pb2.LabelRequest, context: grpc.ServicerContext) -> tuple[Job, float]:
        if self.shutting_down.is_set():
            raise _Failure(grpc.StatusCode.UNAVAILABLE, "the teacher is shutting down; retry on another server")
        height, width = frame_size(request, self.max_pixels)
        # The decoded frame's memory is reserved before decoding and given back when its job ends.
        nbytes = height * width * 3
        if self.limiter is not None:
            cap = self.limiter.limits.max_frame_bytes
            if cap is not None and nbytes > cap:
                raise _Failure(grpc.StatusCode.INVALID_ARGUMENT,
                               f"a {height}x{width} frame needs {nbytes >> 20} MiB decoded; this server holds at most "
                               f"{cap >> 20} MiB of frames; scale it down before sending")
            try:
                self.limiter.acquire_bytes(nbytes)
            except LimitExceeded as exc:
                raise _Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s) from None
        try:
            payload, decode_s = parse_request(request, self.max_pixels)
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None else None
            try:
                job = self.batcher.submit(request.camera_id, payload, deadline, need=need_from_request(request))
            except QueueFull as exc:
                raise _Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later", exc.retry_after_s) from None
            except ShuttingDown as exc:
                raise _Failure(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        except BaseException:
            if self.limiter is not None:
                self.limiter.release_bytes(nbytes)
            raise
        if self.limiter is not None:
            limiter = self.limiter
            job.future.add_done_callback(lambda _: limiter.release_bytes(nbytes))
        return job, decode_s

    def _wait(self, job: Job, remaining: Optional[float], context: Optional[grpc.ServicerContext] = None) -> LabelResult:
        try:
            # A little past the deadline: gRPC itself ends the call at the deadline.
            return job.future.result(timeout=None if remaining is None else max(0.0, remaining) + 0.5)
        except FutureTimeout:
            self.batcher.cancel(job)
            raise _Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while the frame waited") from None
        except DeadlineExpired as exc:
            raise _Failure(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)) from None
        except QueueFull as exc:
            raise _Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later", exc.retry_after_s) from None
        except ShuttingDown as exc:
            raise _Failure(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        except CancelledError:
            # gRPC cancels the job when the caller's deadline passes: that is DEADLINE_EXCEEDED, not CANCELLED.
            left = context.time_remaining() if context is not None else None
            if (job.deadline is not None and time.monotonic() >= job.deadline - 0.05) or (left is not None and left <= 0.0):
                raise _Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while the frame waited") from None
            raise _Failure(grpc.StatusCode.CANCELLED, "the request was cancelled") from None
        except Exception as exc:  # noqa: BLE001 - the model failed on this frame
            raise _Failure(grpc.StatusCode.INTERNAL, f"the teacher failed on this frame: {type(exc).__name__}: {exc}") from None

    def _response(self, request: Any, job: Job, result: LabelResult, start: float, decode_s: float) -> teacher_pb2.LabelResponse:
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

    @staticmethod
    def _error_response(request: Any, failure: _Failure) -> teacher_pb2.LabelResponse:
        retry_ms = int(failure.retry_after_s * 1000) + 1 if failure.retry_after_s is not None else 0
        return teacher_pb2.LabelResponse(
            camera_id=request.camera_id,
            frame_index=request.frame_index,
            error=teacher_pb2.Error(code=failure.code.value[0], message=failure.message, retry_after_ms=retry_ms),
        )


def add_to_server(servicer: TeacherServicer, server: grpc.Server) -> None:
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
