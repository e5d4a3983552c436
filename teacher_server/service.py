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

from core.labels import RETRY_AFTER_KEY
from protos import teacher_pb2, teacher_pb2_grpc
from teacher_server.auth import TokenAuth
from teacher_server.batcher import DeadlineExpired, DynamicBatcher, Job, QueueFull, ShuttingDown
from teacher_server.codec import FrameError, decode_encoded, decode_raw, encode_label_map
from core.groups import GroupError, GroupSpec, known_groups, resolve_groups
from teacher_server.labeler import LabelResult
from teacher_server.metrics import TeacherMetrics

log = logging.getLogger(__name__)

#: Trailing-metadata key of the backpressure hint (milliseconds, decimal string).
_UNAUTHENTICATED = "missing or invalid bearer token for this camera"


@dataclass
class LabelPayload:
    """What a job carries into the batch: a decoded frame and what to label in it."""

    frame: np.ndarray
    spec: GroupSpec
    score_threshold: Optional[float]


class _Failure(Exception):
    """A request ends with this status; retry_after_s goes into the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: Optional[float] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def parse_request(request: teacher_pb2.LabelRequest, max_pixels: int) -> tuple[LabelPayload, float]:
    """Decode and validate; returns the payload and the decode time in seconds."""
    start = time.perf_counter()
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
    ) -> None:
        self.batcher = batcher
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
        if not self._authorized(context, request.camera_id):
            self.metrics.observe_request(grpc.StatusCode.UNAUTHENTICATED.name)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
        try:
            job, decode_s = self._submit(request, context)
            context.add_callback(lambda: self.batcher.cancel(job))
            result = self._wait(job, context.time_remaining())
        except _Failure as failure:
            self.metrics.observe_request(failure.code.name)
            if failure.retry_after_s is not None:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(failure.retry_after_s * 1000) + 1)),))
            context.abort(failure.code, failure.message)
        response = self._response(request, job, result, start, decode_s)
        self.metrics.observe_request(grpc.StatusCode.OK.name, time.perf_counter() - start)
        return response

    # -- bidirectional stream ----------------------------------------------------------------
    def LabelStream(self, request_iterator: Iterator[teacher_pb2.LabelRequest], context: grpc.ServicerContext) -> Iterator[teacher_pb2.LabelResponse]:
        """One response per request, in request order; a bad frame gets an `error` response."""
        if not self._authorized(context, None):  # no valid token at all: refuse before reading
            self.metrics.observe_request(grpc.StatusCode.UNAUTHENTICATED.name)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
        # Items: ("job", request, job, t0, decode_s) | ("error", request, _Failure) | ("auth",) | ("end",)
        pending: queue.Queue = queue.Queue(maxsize=max(2, self.batcher.max_queue))
        live_jobs: set[Job] = set()
        lock = threading.Lock()

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
            try:
                for request in request_iterator:
                    t0 = time.perf_counter()
                    if not self._authorized(context, request.camera_id):
                        put(("auth",))
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
                continue
            kind = item[0]
            if kind == "auth":
                self.metrics.observe_request(grpc.StatusCode.UNAUTHENTICATED.name)
                context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
            if kind == "end":
                if item[1] is not None:
                    context.abort(item[1].code, item[1].message)
                return
            if kind == "error":
                _, request, failure = item
                self.metrics.observe_request(failure.code.name)
                yield self._error_response(request, failure)
                continue
            _, request, job, t0, decode_s = item
            try:
                result = self._wait(job, context.time_remaining())
            except _Failure as failure:
                self.metrics.observe_request(failure.code.name)
                yield self._error_response(request, failure)
                continue
            finally:
                with lock:
                    live_jobs.discard(job)
            self.metrics.observe_request(grpc.StatusCode.OK.name, time.perf_counter() - t0)
            yield self._response(request, job, result, t0, decode_s)

    # -- info ------------------------------------------------------------------------------
    def GetInfo(self, request: teacher_pb2.InfoRequest, context: grpc.ServicerContext) -> teacher_pb2.InfoResponse:
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

    def _submit(self, request: teacher_pb2.LabelRequest, context: grpc.ServicerContext) -> tuple[Job, float]:
        if self.shutting_down.is_set():
            raise _Failure(grpc.StatusCode.UNAVAILABLE, "the teacher is shutting down; retry on another server")
        payload, decode_s = parse_request(request, self.max_pixels)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        try:
            job = self.batcher.submit(request.camera_id, payload, deadline)
        except QueueFull as exc:
            raise _Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later", exc.retry_after_s) from None
        except ShuttingDown as exc:
            raise _Failure(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        return job, decode_s

    def _wait(self, job: Job, remaining: Optional[float]) -> LabelResult:
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
            if job.deadline is not None and time.monotonic() >= job.deadline:
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
        )

    @staticmethod
    def _error_response(request: Any, failure: _Failure) -> teacher_pb2.LabelResponse:
        retry_ms = int(failure.retry_after_s * 1000) + 1 if failure.retry_after_s is not None else 0
        return teacher_pb2.LabelResponse(
            camera_id=request.camera_id,
            frame_index=request.frame_index,
            error=teacher_pb2.Error(code=failure.code.value[0], message=failure.message, retry_after_ms=retry_ms),
        )
