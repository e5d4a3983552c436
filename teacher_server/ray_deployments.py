"""The two Ray Serve deployments of the teacher fleet: a thin gRPC ingress and the model replicas.

The ingress runs the native server's own TeacherServicer (validation, tokens,
stream semantics, status codes, response building), so both engines answer
alike; only the queue under it differs. Where the native server has its
DynamicBatcher, the ingress has `ModelQueue`: each frame is a call through a
Serve handle to `TeacherModel`, whose replicas batch with `@serve.batch` and
may sit on any GPU of any machine in the cluster. A frame whose replica dies
is sent again (to another replica) instead of failing the camera's call.

Ray is imported only inside functions: importing this module needs no Ray.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import grpc

from protos import teacher_pb2
from teacher_server.auth import TokenAuth
from teacher_server.batcher import Job, QueueFull, ShuttingDown
from teacher_server.labeler import LabelResult
from teacher_server.metrics import _BATCH_BUCKETS, _LATENCY_BUCKETS
from teacher_server.service import LabelPayload, TeacherServicer

log = logging.getLogger(__name__)

#: Times one frame is sent to a replica before its caller gets UNAVAILABLE.
REPLICA_ATTEMPTS = 3
_HEALTH_SERVICES = ("", teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name)


@dataclass(frozen=True)
class ModelSettings:
    """What every model replica loads and how it batches (travels to the replicas pickled)."""

    backend: str
    weights: Optional[str] = None
    device: str = "cpu"
    threads: int = 1
    max_batch: int = 8
    max_delay_ms: float = 10.0
    score_threshold: float = 0.5
    warmup: bool = True


@dataclass(frozen=True)
class IngressSettings:
    """The limits the ingress enforces, as the native server's ServerConfig names them."""

    max_batch: int
    max_queue: int
    max_queue_per_camera: int
    max_message_bytes: int
    max_pixels: int
    score_threshold: float
    tokens: Optional[dict] = None
    #: Serve's request_timeout_s: the server-side deadline when the client sends none we can see.
    request_timeout_s: Optional[float] = None
    #: Threads that run TeacherServicer calls (each waiting unary call holds one).
    threads: int = 256


class FleetStats:
    """Frames and batches per replica, for the benchmark and the tests (a Ray actor, num_cpus=0)."""

    def __init__(self) -> None:
        self.replicas: dict[str, dict[str, float]] = {}
        self.resent = 0

    def record(self, replica: str, frames: int, seconds: float) -> None:
        row = self.replicas.setdefault(replica, {"computed": 0, "batches": 0, "busy_s": 0.0})
        row["computed"] += frames
        row["batches"] += 1
        row["busy_s"] += seconds

    def record_resend(self) -> None:
        self.resent += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {name: dict(row) for name, row in self.replicas.items()}

    def frames_resent(self) -> int:
        """Frames sent again because the replica computing them died."""
        return self.resent


class RayMetrics:
    """The native server's metric names on Ray's metrics, which every node exports with Ray's own.

    Ray prefixes them with `ray_` (e.g. ray_jitnet_teacher_requests_total); each
    replica reports its own series, tagged with the replica by Ray.
    """

    def __init__(self) -> None:
        from ray.util import metrics

        self._requests = metrics.Counter("jitnet_teacher_requests", "Label requests answered, by gRPC status code", ("code",))
        self._latency = metrics.Histogram(
            "jitnet_teacher_request_latency_seconds", "Ingress time per successful label request", list(_LATENCY_BUCKETS)
        )
        self._batch = metrics.Histogram("jitnet_teacher_batch_size", "Frames computed together", list(_BATCH_BUCKETS))
        self._model_s = metrics.Histogram("jitnet_teacher_batch_seconds", "Model time per batch", list(_LATENCY_BUCKETS))
        self._frames = metrics.Counter("jitnet_teacher_frames_computed", "Frames the model computed")
        self._in_flight = metrics.Gauge("jitnet_teacher_queue_depth", "Frames sent to the model and not yet answered")

    def observe_request(self, code: str, seconds: Optional[float] = None) -> None:
        self._requests.inc(1.0, {"code": code})
        if seconds is not None:
            self._latency.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        for histogram, value in ((self._batch, size), (self._model_s, seconds)):
            histogram.observe(value)
        self._frames.inc(float(size))

    def in_flight(self, frames: int) -> None:
        self._in_flight.set(frames)


# -- the model replicas ---------------------------------------------------------------------------
class TeacherModel:
    """One teacher model; Serve runs `replicas` of these and routes each frame to one."""

    def __init__(self, settings: ModelSettings, stats: Any = None) -> None:
        from ray import serve

        # Before torch loads: idle OpenMP threads must not spin on a shared CPU (see bench train).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        from teacher_server.backends import load_backend
        from teacher_server.labeler import Labeler

        torch.set_num_threads(settings.threads)
        self._labeler = Labeler(
            load_backend(settings.backend, weights=settings.weights, device=settings.device),
            score_threshold=settings.score_threshold,
        )
        if settings.warmup:
            self._labeler.backend.warmup()
        self._batched = serve.batch(max_batch_size=settings.max_batch, batch_wait_timeout_s=settings.max_delay_ms / 1000.0)(
            self._label_batch
        )
        # One model call at a time, off the replica's event loop (which keeps taking frames meanwhile).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-model")
        self._stats = stats
        self._metrics = RayMetrics()
        self._replica = serve.get_replica_context().replica_id.unique_id

    def describe(self) -> tuple[str, str]:
        return self._labeler.model_name, self._labeler.model_version

    async def label(self, payload: LabelPayload) -> LabelResult:
        return await self._batched(payload)

    async def _label_batch(self, payloads: list[LabelPayload]) -> list[LabelResult]:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._compute, payloads)

    def _compute(self, payloads: list[LabelPayload]) -> list[LabelResult]:
        start = time.perf_counter()
        results = self._labeler.label_batch(
            [p.frame for p in payloads], [p.spec for p in payloads], [p.score_threshold for p in payloads]
        )
        seconds = time.perf_counter() - start
        self._metrics.observe_batch(len(payloads), seconds)
        if self._stats is not None:
            self._stats.record.remote(self._replica, len(payloads), seconds)
        return results


# -- the ingress ----------------------------------------------------------------------------------
class _Aborted(Exception):
    """TeacherServicer ended the call with a status (already set on Serve's context)."""


class ServeCallContext:
    """The grpc.ServicerContext calls TeacherServicer makes, on Serve's RayServegRPCContext.

    Serve's proxy does not pass the client's deadline on, so time_remaining() is
    Serve's request timeout (or None); a client that gives up makes Serve cancel
    the call, and `finish` then runs the servicer's callbacks (which drop the frame).
    """

    def __init__(self, grpc_context: Any, timeout_s: Optional[float]) -> None:
        self._context = grpc_context
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._callbacks: list[Callable[[], None]] = []
        self._active = True
        self._lock = threading.Lock()

    def invocation_metadata(self) -> list:
        return list(self._context.invocation_metadata()) if self._context is not None else []

    def time_remaining(self) -> Optional[float]:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return self._active

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._active:
                self._callbacks.append(callback)
                return True
        callback()  # the call already ended: what the callback releases goes now
        return False

    def set_trailing_metadata(self, metadata: Any) -> None:
        if self._context is not None:
            self._context.set_trailing_metadata(list(metadata))

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        if self._context is not None:
            self._context.set_code(code)
            self._context.set_details(details)
        raise _Aborted(f"{code.name}: {details}")

    def finish(self) -> None:
        with self._lock:
            self._active, callbacks, self._callbacks = False, self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a cleanup hook must not mask the call's outcome
                log.debug("call callback failed", exc_info=True)


def _replica_died(exc: BaseException) -> bool:
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError) or isinstance(getattr(exc, "cause", None), RayActorError)


class ModelQueue:
    """What TeacherServicer asks of a DynamicBatcher, answered by Serve's handle to the model.

    The total queue is Serve's (max_queued_requests on the model deployment,
    max_ongoing_requests per replica); when it is full the call ends with
    RESOURCE_EXHAUSTED and a retry-after hint, as on the native server. Each
    camera may have at most max_per_camera frames in flight (this ingress's count).
    """

    def __init__(self, model: Any, *, max_batch: int, max_queue: int, max_per_camera: int, metrics: RayMetrics,
                 stats: Any = None) -> None:
        self._model, self._metrics, self._stats = model, metrics, stats
        # The names TeacherServicer.GetInfo and LabelStream read.
        self.max_batch, self.max_queue, self.max_per_camera = max_batch, max_queue, max_per_camera
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._lock = threading.Lock()
        self._per_camera: dict[str, int] = {}
        self._in_flight = 0
        self._frame_s = 0.2  # recent time per answered frame, for retry-after hints

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def retry_after_s(self) -> float:
        return max(0.05, self._frame_s)

    def queue_depth(self) -> int:
        return self._in_flight

    def submit(self, camera_id: str, payload: LabelPayload, deadline: Optional[float] = None,
               need: Optional[Any] = None) -> Job:
        """`need` is taken for the servicer's sake and unused: the fleet serves in Serve's order, not by need."""
        if self._loop is None:
            raise ShuttingDown("the fleet ingress is not ready yet; retry")
        with self._lock:
            own = self._per_camera.get(camera_id, 0)
            if own >= self.max_per_camera:
                raise QueueFull(f"camera {camera_id!r} already has {own} frames in flight (limit {self.max_per_camera})",
                                self.retry_after_s())
            self._per_camera[camera_id] = own + 1
            self._in_flight += 1
            self._metrics.in_flight(self._in_flight)
        job = Job(camera_id, payload, deadline)
        job.future = asyncio.run_coroutine_threadsafe(self._label(job), self._loop)
        job.future.add_done_callback(lambda _: self._release(camera_id))
        return job

    def cancel(self, job: Job) -> bool:
        return job.future.cancel()

    def _release(self, camera_id: str) -> None:
        with self._lock:
            left = self._per_camera.get(camera_id, 1) - 1
            if left > 0:
                self._per_camera[camera_id] = left
            else:
                self._per_camera.pop(camera_id, None)
            self._in_flight -= 1
            self._metrics.in_flight(self._in_flight)

    async def _label(self, job: Job) -> LabelResult:
        from ray.serve.exceptions import BackPressureError

        for attempt in range(1, REPLICA_ATTEMPTS + 1):
            response = self._model.label.remote(job.payload)
            try:
                result = await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError as exc:
                raise QueueFull(f"teacher fleet queue is full ({exc.message})", self.retry_after_s()) from None
            except Exception as exc:  # noqa: BLE001 - only a dead replica is worth another try here
                if not _replica_died(exc):
                    raise
                expired = job.deadline is not None and time.monotonic() >= job.deadline
                if attempt == REPLICA_ATTEMPTS or expired:
                    raise ShuttingDown(f"the replica computing this frame went away ({type(exc).__name__}); retry") from None
                log.warning("a model replica died with a frame of %s in flight (attempt %d); sending it again", job.camera_id, attempt)
                if self._stats is not None:
                    self._stats.record_resend.remote()
                continue
            compute_s = (result.timings.get("inference_ms", 0.0) + result.timings.get("postprocess_ms", 0.0)) / 1e3
            now = time.monotonic()
            job.started_at = max(job.enqueued_at, now - compute_s)
            job.batch_size = int(result.timings.get("batch_size", 1))
            self._frame_s = 0.8 * self._frame_s + 0.2 * (now - job.enqueued_at)
            return result
        raise AssertionError("unreachable")


class TeacherIngress:
    """The gRPC methods Serve's proxy routes here, named after the RPCs (Teacher and grpc.health.v1)."""

    def __init__(self, model: Any, settings: IngressSettings, stats: Any = None) -> None:
        self._model = model
        self._settings = settings
        self._metrics = RayMetrics()
        self._queue = ModelQueue(model, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                 max_per_camera=settings.max_queue_per_camera, metrics=self._metrics, stats=stats)
        self._servicer = TeacherServicer(
            self._queue,  # type: ignore[arg-type] - the DynamicBatcher calls it makes, see ModelQueue
            model_name="",
            model_version="",
            default_score_threshold=settings.score_threshold,
            metrics=self._metrics,  # type: ignore[arg-type]
            auth=TokenAuth(settings.tokens) if settings.tokens else None,
            max_pixels=settings.max_pixels,
            max_message_bytes=settings.max_message_bytes,
        )
        self._threads = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="teacher-ingress")
        self._described = False

    async def _ready(self) -> None:
        self._queue.bind(asyncio.get_running_loop())
        if not self._described:
            name, version = await self._model.describe.remote()
            self._servicer.model_name, self._servicer.model_version = name, version
            self._described = True

    async def _unary(self, method: Callable, request: Any, grpc_context: Any, empty: Any) -> Any:
        await self._ready()
        context = ServeCallContext(grpc_context, self._settings.request_timeout_s)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, method, request, context)
        except _Aborted:
            return empty
        finally:
            context.finish()

    async def Label(self, request: teacher_pb2.LabelRequest, grpc_context: Any = None) -> teacher_pb2.LabelResponse:
        if request.ByteSize() > self._settings.max_message_bytes:  # the proxy's own cap may be larger
            grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            grpc_context.set_details(f"the request has {request.ByteSize()} bytes, more than the teacher's "
                                     f"limit of {self._settings.max_message_bytes}")
            self._metrics.observe_request(grpc.StatusCode.RESOURCE_EXHAUSTED.name)
            return teacher_pb2.LabelResponse()
        return await self._unary(self._servicer.Label, request, grpc_context, teacher_pb2.LabelResponse())

    async def GetInfo(self, request: teacher_pb2.InfoRequest, grpc_context: Any = None) -> teacher_pb2.InfoResponse:
        return await self._unary(self._servicer.GetInfo, request, grpc_context, teacher_pb2.InfoResponse())

    async def LabelStream(self, request_stream: Any, grpc_context: Any = None) -> Any:
        """The native stream semantics (one answer per frame, in order; per-frame errors) over Serve's bidi stream."""
        await self._ready()
        loop = asyncio.get_running_loop()
        context = ServeCallContext(grpc_context, self._settings.request_timeout_s)

        def requests() -> Iterator[teacher_pb2.LabelRequest]:  # read on the servicer's reader thread
            while context.is_active():
                try:
                    yield asyncio.run_coroutine_threadsafe(request_stream.__anext__(), loop).result()
                except StopAsyncIteration:
                    return

        answers = self._servicer.LabelStream(requests(), context)
        end = object()
        try:
            while True:
                answer = await loop.run_in_executor(self._threads, next, answers, end)
                if answer is end:
                    return
                yield answer
        except _Aborted:
            return
        finally:
            context.finish()

    async def Check(self, request: Any, grpc_context: Any = None) -> Any:
        """grpc.health.v1 Check: SERVING once a model replica has answered (it has loaded its model)."""
        from grpc_health.v1 import health_pb2

        if request.service not in _HEALTH_SERVICES:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse()
        try:
            await asyncio.wait_for(self._ready(), timeout=5.0)
            status = health_pb2.HealthCheckResponse.SERVING
        except Exception:  # noqa: BLE001 - no replica answered: not serving, whatever the reason
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)
