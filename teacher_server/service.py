"""The gRPC servicer: who is calling, whether they may, and wire messages <-> the batcher.

Everything that decides (batching, fairness, deadlines, limits, pacing, the
labeling rule) lives in plain objects; this file applies them in the order
that makes a refusal cheap: the caller's identity (from the token, before any
message is read for streams), its pacing and its share of the server's calls,
then the frame's header and the queue's admission, and only then decoding.
Message checks and translations are in wire.py, the stream's loop in stream.py.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Iterator, Optional

import grpc

from core.groups import known_groups
from core.labels import RETRY_AFTER_KEY, TeacherLabels
from protos import teacher_pb2, teacher_pb2_grpc
from teacher_server.admission import TooLate
from teacher_server.auth import ANY_CAMERA, TokenAuth
from teacher_server.jobs import DeadlineExpired, Job, QueueFull, ShuttingDown
from teacher_server.limits import CallLimiter, LimitExceeded, Ticket
from teacher_server.metrics import TeacherMetrics
from teacher_server.scheduling import need_from_request
from teacher_server.stream import serve_stream
from teacher_server.wire import (GARBAGE, UNAUTHENTICATED, Failure, LabelPayload, UndecodableRequest, add_to_server,
                                 check_fields, decode_frame, frame_size, label_response, parse_options, retry_after_ms)

__all__ = ["DEFAULT_FIRST_FRAME_S", "DEFAULT_STREAM_IDLE_S", "LabelPayload", "TeacherServicer", "add_to_server"]

log = logging.getLogger(__name__)

#: A stream that carried no frame for this long is ended (UNAVAILABLE: reconnect when there is work).
DEFAULT_STREAM_IDLE_S = 60.0
#: A stream that sends no frame this soon after opening is ended: opened streams hold a call slot.
DEFAULT_FIRST_FRAME_S = 5.0
#: Undecodable requests are logged at most once per this many seconds, with a count.
_GARBAGE_LOG_INTERVAL_S = 10.0


class TeacherServicer(teacher_pb2_grpc.TeacherServicer):
    """Label / LabelStream / GetInfo on top of a running DynamicBatcher (or anything with its submit/cancel)."""

    def __init__(
        self,
        batcher: Any,
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
        first_frame_s: Optional[float] = None,
    ) -> None:
        self.batcher = batcher
        #: Calls, streams, pacing and frame bytes per camera and in total (None: only gRPC's own limit).
        self.limiter = limiter
        self.stream_idle_s = stream_idle_s
        self.first_frame_s = first_frame_s
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
            self.count_garbage(request)
            self.abort(context, Failure(grpc.StatusCode.INVALID_ARGUMENT, GARBAGE))
        ticket: Optional[Ticket] = None
        try:
            try:
                camera = self._unary_caller(request, context)
                ticket = self.open_call(camera, stream=False)
                job, decode_s = self.submit(request, context, camera)
                context.add_callback(lambda: self.batcher.cancel(job))
                result = self.wait(job, context, camera)
            except Failure as failure:
                self.abort(context, failure)
            response = label_response(request, job, result, start, decode_s)
            self.observe_delivery(context, time.perf_counter() - start)
            return response
        finally:
            if ticket is not None:
                ticket.release()
            self.forget_idle()

    # -- bidirectional stream ----------------------------------------------------------------
    def LabelStream(self, request_iterator: Iterator[teacher_pb2.LabelRequest], context: grpc.ServicerContext) -> Iterator[teacher_pb2.LabelResponse]:
        """One response per request, in request order; a bad frame gets an `error` response (stream.py)."""
        return serve_stream(self, request_iterator, context)

    # -- info ------------------------------------------------------------------------------
    def GetInfo(self, request: teacher_pb2.InfoRequest, context: grpc.ServicerContext) -> teacher_pb2.InfoResponse:
        if isinstance(request, UndecodableRequest):
            self.count_garbage(request)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, GARBAGE)
        if self.auth is not None and self.auth.identify(context.invocation_metadata()) is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        return teacher_pb2.InfoResponse(
            model_name=self.model_name,
            model_version=self.model_version,
            groups=[teacher_pb2.GroupInfo(name=n, classes=list(c)) for n, c in known_groups().items()],
            default_score_threshold=self.default_score_threshold,
            max_batch_size=self.batcher.max_batch,
            max_queue=self.batcher.max_queue,
            max_message_bytes=self.max_message_bytes,
        )

    # -- who is calling, and may they ------------------------------------------------------------
    def _unary_caller(self, request: teacher_pb2.LabelRequest, context: grpc.ServicerContext) -> str:
        """The camera a call counts against: the token's (which must be the request's) or, without tokens, the request's."""
        if self.auth is not None:
            identity = self.auth.identify(context.invocation_metadata())
            if identity is None or identity not in (request.camera_id, ANY_CAMERA):
                raise Failure(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        check_fields(request)
        return request.camera_id

    def stream_caller(self, context: grpc.ServicerContext) -> Optional[str]:
        """The camera a stream counts against from the moment it opens: the token's; None until its first frame
        names one (no tokens, or the operator's any-camera token). UNAUTHENTICATED without a valid token."""
        if self.auth is None:
            return None
        identity = self.auth.identify(context.invocation_metadata())
        if identity is None:
            raise Failure(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        return None if identity == ANY_CAMERA else identity

    def open_call(self, camera: Optional[str], *, stream: bool) -> Optional[Ticket]:
        """Count the call against the server and `camera` (pacing first); RESOURCE_EXHAUSTED with a hint if over."""
        if self.limiter is None:
            return None
        try:
            return self.limiter.open(camera, stream=stream)
        except LimitExceeded as exc:
            raise _exhausted(exc) from None

    def knock(self, camera: str) -> None:
        """A stream's frame of `camera` arrives: its pacing decides (RESOURCE_EXHAUSTED with a hint if not now)."""
        if self.limiter is not None:
            try:
                self.limiter.frame(camera)
            except LimitExceeded as exc:
                raise _exhausted(exc) from None

    def bind(self, ticket: Optional[Ticket], camera: str) -> None:
        """A stream opened before its camera was known names it now: count it against that camera's share."""
        if ticket is not None:
            try:
                ticket.bind(camera)
            except LimitExceeded as exc:
                raise _exhausted(exc) from None

    def hold_back(self, failure: Failure, context: grpc.ServicerContext) -> None:
        """A refusal for a caller that ignores hints is sent only after a while (within its deadline)."""
        held = failure.held
        if held is None:
            return
        try:
            hold = held.hold_s
            remaining = context.time_remaining()
            if remaining is not None:
                hold = min(hold, remaining - 0.05)
            if hold > 0:
                self.shutting_down.wait(hold)
        finally:
            held.release()

    def forget_idle(self) -> None:
        """Cameras gone a while are forgotten by the limiter and by the queue policy (bounded state)."""
        if self.limiter is None:
            return
        forget = getattr(self.batcher, "forget_camera", None)
        for camera in self.limiter.sweep():
            if forget is not None:
                forget(camera)

    # -- frames ------------------------------------------------------------------------------
    def submit(self, request: teacher_pb2.LabelRequest, context: grpc.ServicerContext, camera: str) -> tuple[Job, float]:
        """Check the request from its header, ask the queue, then decode and queue it; Failure if any says no."""
        if self.shutting_down.is_set():
            raise Failure(grpc.StatusCode.UNAVAILABLE, "the teacher is shutting down; retry on another server")
        height, width = frame_size(request, self.max_pixels)
        spec, threshold = parse_options(request)
        # The decoded frame's memory is reserved before decoding and given back when its job ends.
        nbytes = height * width * 3
        limiter = self.limiter
        if limiter is not None:
            cap = limiter.limits.max_frame_bytes
            if cap is not None and nbytes > cap:
                raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"a {height}x{width} frame needs {nbytes >> 20} MiB decoded; this server holds at most "
                              f"{cap >> 20} MiB of frames; scale it down before sending")
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        precheck = getattr(self.batcher, "precheck", None)
        extra: dict[str, Any] = {}
        try:
            if precheck is not None:
                extra["checked"] = precheck(request.camera_id, deadline)
        except QueueFull as exc:
            raise self._queue_failure(camera, exc) from None
        except ShuttingDown as exc:
            raise Failure(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        if limiter is not None:
            try:
                limiter.acquire_bytes(nbytes)
            except LimitExceeded as exc:
                raise Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s) from None
        try:
            frame, decode_s = decode_frame(request, self.max_pixels)
            try:
                job = self.batcher.submit(request.camera_id, LabelPayload(frame, spec, threshold), deadline,
                                          need=need_from_request(request), **extra)
            except QueueFull as exc:
                raise self._queue_failure(camera, exc) from None
            except ShuttingDown as exc:
                raise Failure(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        except BaseException:
            if limiter is not None:
                limiter.release_bytes(nbytes)
            raise
        if limiter is not None:
            job.future.add_done_callback(lambda _: limiter.release_bytes(nbytes))
        return job, decode_s

    def wait(self, job: Job, context: Optional[grpc.ServicerContext], camera: str) -> TeacherLabels:
        """The job's answer, or the Failure that says why there is none."""
        remaining = context.time_remaining() if context is not None else None
        try:
            # A little past the deadline: gRPC itself ends the call at the deadline.
            return job.future.result(timeout=None if remaining is None else max(0.0, remaining) + 0.5)
        except FutureTimeout:
            self.batcher.cancel(job)
            raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while the frame waited") from None
        except DeadlineExpired as exc:
            raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)) from None
        except (QueueFull, TooLate) as exc:
            raise self._queue_failure(camera, exc) from None
        except ShuttingDown as exc:
            raise Failure(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        except CancelledError:
            # gRPC cancels the job when the caller's deadline passes: that is DEADLINE_EXCEEDED, not CANCELLED.
            left = context.time_remaining() if context is not None else None
            if (job.deadline is not None and time.monotonic() >= job.deadline - 0.05) or (left is not None and left <= 0.0):
                raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while the frame waited") from None
            raise Failure(grpc.StatusCode.CANCELLED, "the request was cancelled") from None
        except Exception as exc:  # noqa: BLE001 - the model failed on this frame
            raise Failure(grpc.StatusCode.INTERNAL, f"the teacher failed on this frame: {type(exc).__name__}: {exc}") from None

    def _queue_failure(self, camera: str, exc: Any) -> Failure:
        """The queue or deadline admission said no: RESOURCE_EXHAUSTED with the hint. When the camera is over its
        own share, its pacing holds it to the hint (grown if it ignores them); a full server or a deadline that
        cannot be met is only advice (an agent's next frame may come sooner, with its own deadline)."""
        hint = exc.retry_after_s
        if self.limiter is not None and getattr(exc, "own", False):
            hint = self.limiter.hint(camera, hint)
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later", hint)

    # -- endings ------------------------------------------------------------------------------
    def abort(self, context: grpc.ServicerContext, failure: Failure) -> None:
        """End the call with `failure` (counted; held back first if the caller ignores hints; retry-after in the
        trailing metadata when there is one)."""
        self.hold_back(failure, context)
        self.metrics.observe_request(failure.code.name)
        if failure.retry_after_s is not None:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(retry_after_ms(failure.retry_after_s))),))
        context.abort(failure.code, failure.message)

    def observe_delivery(self, context: grpc.ServicerContext, seconds: float) -> None:
        """An answer is OK only if its caller still waits for it: else DEADLINE_EXCEEDED or CANCELLED."""
        if context.is_active():
            self.metrics.observe_request(grpc.StatusCode.OK.name, seconds)
            return
        remaining = context.time_remaining()
        late = remaining is not None and remaining <= 0.0
        self.metrics.observe_request((grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED).name)

    def count_garbage(self, request: UndecodableRequest) -> None:
        """One log line per interval for requests that are not protobuf, with how many there were."""
        with self._garbage_lock:
            self._garbage_count += 1
            now = time.monotonic()
            if now - self._garbage_logged_at < _GARBAGE_LOG_INTERVAL_S:
                return
            self._garbage_logged_at, count, self._garbage_count = now, self._garbage_count, 0
        log.warning("refused %d undecodable request(s) in the last %g s (latest: %d bytes)",
                    count, _GARBAGE_LOG_INTERVAL_S, request.nbytes)


def _exhausted(exc: LimitExceeded) -> Failure:
    return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s, held=exc if exc.hold_s > 0 else None)
