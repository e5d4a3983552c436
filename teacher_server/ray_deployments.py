"""The two Ray Serve deployments of the teacher fleet: a thin gRPC ingress and the model replicas.

The ingress runs the native server's own TeacherServicer (validation, tokens,
call and stream limits, pacing, idle streams, status codes, response building)
with the native server's CallLimiter (`server.limiter_from_config`), so both
engines answer alike; only the queue
under it differs. Where the native server has its DynamicBatcher, the ingress
has `ray_queue.FleetQueue`: the same policy queue and admission, drained by
calls through a Serve handle to `TeacherModel`, whose replicas batch with
`@serve.batch` and may sit on any GPU of any machine in the cluster. A frame
whose replica dies is sent again (to another replica) instead of failing the
camera's call. Limits and queue are per ingress replica (one by default).

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

from core.labels import TeacherLabels
from core.labels import RETRY_AFTER_KEY
from protos import teacher_pb2
from teacher_server.auth import TokenAuth
from teacher_server.metrics import _BATCH_BUCKETS, _LATENCY_BUCKETS
from teacher_server.ray_queue import FleetQueue
from teacher_server.scheduling import camera_share
from teacher_server.server import ServerConfig, limiter_from_config
from teacher_server.service import LabelPayload, TeacherServicer

log = logging.getLogger(__name__)

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
    """What the ingress enforces: the native server's whole ServerConfig, and what the fleet adds to it."""

    config: ServerConfig
    #: Frames the model replicas take at once (their max_ongoing_requests together); more wait in the ingress queue.
    slots: int
    #: Replicas the admission estimate counts on (the fixed count, or the autoscaler's minimum).
    replicas: int = 1
    #: Serve's request_timeout_s: the server-side deadline when the client sends none we can see.
    request_timeout_s: Optional[float] = None


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

    async def label(self, payload: LabelPayload) -> TeacherLabels:
        return await self._batched(payload)

    async def _label_batch(self, payloads: list[LabelPayload]) -> list[TeacherLabels]:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._compute, payloads)

    def _compute(self, payloads: list[LabelPayload]) -> list[TeacherLabels]:
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
    """TeacherServicer ended the call with a status (set on Serve's context, except a stream's RESOURCE_EXHAUSTED)."""


#: Metadata in which a client may state its deadline to the fleet: milliseconds left when it sent the call.
#: Serve's proxy does not pass gRPC's own deadline on; this one reaches the ingress's admission.
DEADLINE_KEY = "jitnet-deadline-ms"
#: Longest deadline accepted in DEADLINE_KEY (a day).
_MAX_DEADLINE_MS = 86_400_000


def stated_deadline_s(metadata: Any) -> Optional[float]:
    """Seconds left by the client's DEADLINE_KEY metadata; None without one; ValueError if it is not a
    whole number of milliseconds in (0, a day]."""
    for key, value in metadata or ():
        if key.lower() == DEADLINE_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if not text.strip().isdigit() or not 0 < int(text) <= _MAX_DEADLINE_MS:
                raise ValueError(f"{DEADLINE_KEY} metadata must be a whole number of milliseconds between 1 and "
                                 f"{_MAX_DEADLINE_MS}, got {text[:32]!r}")
            return int(text) / 1000.0
    return None


class ServeCallContext:
    """The grpc.ServicerContext calls TeacherServicer makes, on Serve's RayServegRPCContext.

    Serve's proxy does not pass the client's deadline on, so time_remaining() is
    the nearer of Serve's request timeout and the deadline the client states in
    DEADLINE_KEY metadata (None without either); a client that gives up makes
    Serve cancel the call, and `finish` then runs the servicer's callbacks (which
    drop the frame). A stream's RESOURCE_EXHAUSTED is kept off Serve's context
    (`stream_refusal` raises it as StreamRefused instead, see ray_status.py).
    """

    def __init__(self, grpc_context: Any, timeout_s: Optional[float], *, stream: bool = False) -> None:
        self._context = grpc_context
        self._stream = stream
        self.code: Optional[grpc.StatusCode] = None
        self.details = ""
        self._retry_after_ms: Optional[str] = None
        now = time.monotonic()
        self._deadline = None if timeout_s is None else now + timeout_s
        #: Why the DEADLINE_KEY metadata is malformed (the call then ends INVALID_ARGUMENT), else None.
        self.bad_deadline: Optional[str] = None
        try:
            stated = stated_deadline_s(self.invocation_metadata())
        except ValueError as exc:
            stated, self.bad_deadline = None, str(exc)
        if stated is not None:
            self._deadline = now + stated if self._deadline is None else min(self._deadline, now + stated)
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
        metadata = list(metadata)
        self._retry_after_ms = dict(metadata).get(RETRY_AFTER_KEY, self._retry_after_ms)
        if self._context is not None:
            self._context.set_trailing_metadata(metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        if self._context is not None and not (self._stream and code == grpc.StatusCode.RESOURCE_EXHAUSTED):
            self._context.set_code(code)
            self._context.set_details(details)
        raise _Aborted(f"{code.name}: {details}")

    def stream_refusal(self) -> Exception:
        """What a stream ended by abort() raises to Serve so the client gets its status (see ray_status.py)."""
        from teacher_server.ray_status import StreamEnded, StreamRefused

        if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            hint = f" (retry after {self._retry_after_ms} ms)" if self._retry_after_ms else ""
            return StreamRefused(f"{self.details}{hint}")
        # Serve pickles it to the proxy, which sends the code set on the context.
        return StreamEnded(f"{self.code.name if self.code else 'UNKNOWN'}: {self.details}")

    def finish(self) -> None:
        with self._lock:
            self._active, callbacks, self._callbacks = False, self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a cleanup hook must not mask the call's outcome
                log.debug("call callback failed", exc_info=True)


def ingress_slots(config: ServerConfig) -> int:
    """Calls one ingress replica takes at once: gRPC's pool of the native server, with room for held-back refusals."""
    return config.max_concurrent_rpcs + (config.max_held if config.max_hold_s > 0 else 0)


class TeacherIngress:
    """The gRPC methods Serve's proxy routes here, named after the RPCs (Teacher and grpc.health.v1)."""

    def __init__(self, model: Any, settings: IngressSettings, stats: Any = None) -> None:
        from teacher_server.ray_status import QuietStreamEnds

        # Serve logs every exception of a method with its traceback: not the streams we end on purpose.
        logging.getLogger("ray.serve").addFilter(QuietStreamEnds())
        config = settings.config
        self._model = model
        self._settings = settings
        self._max_message_bytes = config.max_message_bytes
        self._metrics = RayMetrics()
        self._queue = FleetQueue(
            model, max_batch=config.max_batch, max_queue=config.max_queue,
            max_per_camera=camera_share(config.max_queue, config.max_queue_per_camera), policy=config.policy,
            deadline_admission=config.deadline_admission, slots=settings.slots, replicas=settings.replicas,
            max_delay_s=config.max_delay_ms / 1000.0, metrics=self._metrics, stats=stats,
        )
        self._servicer = TeacherServicer(
            self._queue,  # type: ignore[arg-type] - the DynamicBatcher calls it makes, see FleetQueue
            model_name="",
            model_version="",
            default_score_threshold=config.score_threshold,
            metrics=self._metrics,  # type: ignore[arg-type]
            auth=TokenAuth(config.tokens) if config.tokens else None,
            max_pixels=config.max_pixels,
            max_message_bytes=config.max_message_bytes,
            limiter=limiter_from_config(config),
            stream_idle_s=config.stream_idle_s,
            first_frame_s=config.first_frame_s,
        )
        # Each waiting unary call, each open stream and each held-back refusal holds one of these
        # (gRPC's own pool on the native server).
        self._threads = ThreadPoolExecutor(max_workers=ingress_slots(config), thread_name_prefix="teacher-ingress")
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
            self._check_deadline(context)
            return await asyncio.get_running_loop().run_in_executor(self._threads, method, request, context)
        except _Aborted:
            return empty
        finally:
            context.finish()

    def _check_deadline(self, context: ServeCallContext) -> None:
        """A malformed DEADLINE_KEY ends the call with INVALID_ARGUMENT before anything else."""
        if context.bad_deadline is not None:
            self._metrics.observe_request(grpc.StatusCode.INVALID_ARGUMENT.name)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, context.bad_deadline)

    async def Label(self, request: teacher_pb2.LabelRequest, grpc_context: Any = None) -> teacher_pb2.LabelResponse:
        if request.ByteSize() > self._max_message_bytes:  # the proxy's own cap may be larger
            grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            grpc_context.set_details(f"the request has {request.ByteSize()} bytes, more than the teacher's "
                                     f"limit of {self._max_message_bytes}")
            self._metrics.observe_request(grpc.StatusCode.RESOURCE_EXHAUSTED.name)
            return teacher_pb2.LabelResponse()
        return await self._unary(self._servicer.Label, request, grpc_context, teacher_pb2.LabelResponse())

    async def GetInfo(self, request: teacher_pb2.InfoRequest, grpc_context: Any = None) -> teacher_pb2.InfoResponse:
        return await self._unary(self._servicer.GetInfo, request, grpc_context, teacher_pb2.InfoResponse())

    async def LabelStream(self, request_stream: Any, grpc_context: Any = None) -> Any:
        """The native stream semantics (one answer per frame, in order; per-frame errors) over Serve's bidi stream."""
        await self._ready()
        loop = asyncio.get_running_loop()
        context = ServeCallContext(grpc_context, self._settings.request_timeout_s, stream=True)

        def requests() -> Iterator[teacher_pb2.LabelRequest]:  # read on the servicer's reader thread
            while context.is_active():
                try:
                    yield asyncio.run_coroutine_threadsafe(request_stream.__anext__(), loop).result()
                except StopAsyncIteration:
                    return

        end = object()
        try:
            self._check_deadline(context)
            answers = self._servicer.LabelStream(requests(), context)
            while True:
                answer = await loop.run_in_executor(self._threads, next, answers, end)
                if answer is end:
                    return
                yield answer
        except _Aborted:
            raise context.stream_refusal() from None
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
