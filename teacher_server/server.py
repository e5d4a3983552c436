"""Start a teacher server, in its own process (the CLI) or embedded in another one.

`start_server` wires the pieces together: a labeler behind a dynamic batcher,
the gRPC servicer, health checking and reflection, optional TLS and tokens,
and Prometheus metrics. It returns a handle with the address and a graceful
`stop`, so the SDK and tests can run a real teacher on a free port.
"""
from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos import teacher_pb2
from teacher_server.auth import TokenAuth, load_tokens
from teacher_server.backends.base import TeacherBackend
from teacher_server.batcher import BatcherStats, DynamicBatcher
from teacher_server.codec import DEFAULT_MAX_PIXELS
from teacher_server.labeler import Labeler
from teacher_server.limits import CallLimiter, CallLimits
from teacher_server.metrics import TeacherMetrics
from teacher_server.semantic import DEFAULT_SCORE_THRESHOLD
from teacher_server.service import DEFAULT_FIRST_FRAME_S, DEFAULT_STREAM_IDLE_S, LabelPayload, TeacherServicer, add_to_server

log = logging.getLogger(__name__)

SERVICE_NAME = teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name


@dataclass(frozen=True)
class ServerConfig:
    """How the server listens, batches and protects itself."""

    host: str = "127.0.0.1"
    #: 0 picks a free port (see ServerHandle.port).
    port: int = 50051
    #: Frames computed together at most; 1 turns batching off.
    max_batch: int = 8
    #: How long the oldest queued frame may wait for others to join its batch.
    max_delay_ms: float = 10.0
    #: Frames waiting in total; beyond it requests get RESOURCE_EXHAUSTED + retry-after.
    max_queue: int = 64
    #: Frames one camera may have waiting (default scheduling.camera_share: 4, at most max_queue // 4).
    max_queue_per_camera: Optional[int] = None
    #: Largest request or response accepted (a 4K raw RGB frame is ~25 MB).
    max_message_bytes: int = 32 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: gRPC's own limit of calls handled at once (each open stream counts as one); past it gRPC
    #: refuses with a bare RESOURCE_EXHAUSTED, so the server's limits below stay under it.
    max_concurrent_rpcs: int = 256
    #: Calls the server itself takes at once (None: max_concurrent_rpcs less 1/16 for headroom);
    #: over it, and over a camera's share, callers get RESOURCE_EXHAUSTED with retry-after.
    max_calls: Optional[int] = None
    max_calls_per_camera: Optional[int] = 16
    max_streams_per_camera: Optional[int] = 2
    #: Bytes of decoded frames held at once (decoding, queued, computing); None = unbounded.
    max_frame_bytes: Optional[int] = 1024 * 1024 * 1024
    #: A stream without a frame for this long is ended with UNAVAILABLE (None = never).
    stream_idle_s: Optional[float] = DEFAULT_STREAM_IDLE_S
    #: A stream that sends no frame this soon after opening is ended with UNAVAILABLE (None = never).
    first_frame_s: Optional[float] = DEFAULT_FIRST_FRAME_S
    #: Calls plus stream frames per second one camera may send (token bucket; None = no bucket), and at once.
    rate_per_camera: Optional[float] = 20.0
    burst_per_camera: int = 40
    #: A camera that calls again before its retry-after hint expired gets a doubled hint, up to this.
    max_retry_after_s: float = 8.0
    #: Refusals to cameras that keep ignoring hints are held back up to this long, at most max_held at once
    #: (these take gRPC call slots on top of max_concurrent_rpcs); 0 = never hold.
    max_hold_s: float = 1.0
    max_held: int = 128
    #: A camera that held and sent nothing for this long is forgotten (pacing, queue-policy state).
    forget_after_s: float = 30.0
    #: Refuse (RESOURCE_EXHAUSTED + retry-after) frames that the measured service time says cannot
    #: be answered within their deadline, and size batches to the deadlines inside; False: the old
    #: rule (admit while the queue has room, drop only what already expired).
    deadline_admission: bool = True
    #: Server reflection on the gRPC port; None = on without tokens, off with tokens (it needs none).
    reflection: Optional[bool] = None
    #: Health checking on its own plain-text port (0 = a free one), for orchestrators; None = off.
    #: Without tokens health is also served on the gRPC port; with tokens only here.
    health_port: Optional[int] = None
    health_host: str = "127.0.0.1"
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    #: camera_id -> bearer token; None = no authentication.
    tokens: Optional[Mapping[str, str]] = None
    tls_cert: Optional[Union[str, Path]] = None
    tls_key: Optional[Union[str, Path]] = None
    #: HTTP port for Prometheus /metrics; None = off, 0 = a free port.
    metrics_port: Optional[int] = None
    metrics_host: str = "127.0.0.1"
    #: /metrics answers only `Authorization: Bearer <metrics_token>` when set.
    metrics_token: Optional[str] = None
    #: Serve /metrics over HTTPS with tls_cert / tls_key.
    metrics_tls: bool = False
    #: Run one frame through the model before serving, so the first camera is not slow.
    warmup: bool = True
    #: Who is served first when frames wait: fair (round-robin) | need (furthest below threshold; scheduling.py).
    policy: str = "fair"


@dataclass
class ServerHandle:
    """A running teacher. `url` is what TeacherClient takes."""

    host: str
    port: int
    tls: bool
    labeler: Labeler
    batcher: DynamicBatcher
    metrics: TeacherMetrics
    metrics_port: Optional[int]
    metrics_tls: bool
    _server: grpc.Server = field(repr=False)
    _health: health.HealthServicer = field(repr=False)
    _servicer: TeacherServicer = field(repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)
    #: Port of the separate health-check server (ServerConfig.health_port), None when off.
    health_port: Optional[int] = None
    _health_server: Optional[grpc.Server] = field(default=None, repr=False)

    @property
    def target(self) -> str:
        """host:port, as grpc.insecure_channel / secure_channel take it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "[::]", "::") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.target}"

    @property
    def metrics_url(self) -> Optional[str]:
        scheme = "https" if self.metrics_tls else "http"
        return None if self.metrics_port is None else f"{scheme}://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def stats(self) -> BatcherStats:
        return self.batcher.stats

    def stop(self, grace: Optional[float] = 5.0) -> None:
        """Stop taking new calls, finish the ones in flight (up to `grace` s), then close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("teacher on %s shutting down (grace %s s)", self.target, grace)
        self._health.enter_graceful_shutdown()
        self._servicer.shutting_down.set()
        self.batcher.close_intake()
        done = self._server.stop(grace)
        self.batcher.drain(grace)
        done.wait(None if grace is None else grace + 5.0)
        if self._health_server is not None:
            self._health_server.stop(0)
        self.batcher.stop(0)
        self.metrics.close()
        log.info("teacher on %s stopped", self.target)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the server terminates (e.g. after stop from a signal handler)."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_server(
    teacher: Union[str, TeacherBackend, Labeler],
    config: Optional[ServerConfig] = None,
    **overrides: Any,
) -> ServerHandle:
    """Serve `teacher` (a backend name like "yolov5s-seg", a backend, or a Labeler).

    Keyword overrides replace fields of `config`, e.g.
    ``start_server("yolov5s-seg", port=0, max_batch=4)``.
    """
    config = replace(config or ServerConfig(), **overrides)
    if isinstance(teacher, Labeler):
        labeler = teacher
    elif isinstance(teacher, TeacherBackend):
        labeler = Labeler(teacher, score_threshold=config.score_threshold)
    else:
        labeler = Labeler.from_name(teacher)
    if config.warmup:
        log.info("warming up %s", labeler.model_name)
        labeler.backend.warmup()

    def process(payloads: list[LabelPayload]) -> list:
        return labeler.label_batch(
            [p.frame for p in payloads],
            [p.spec for p in payloads],
            [p.score_threshold if p.score_threshold is not None else config.score_threshold for p in payloads],
        )

    metrics_holder: dict[str, TeacherMetrics] = {}
    batcher = DynamicBatcher(
        process,
        max_batch=config.max_batch,
        max_delay_s=config.max_delay_ms / 1000.0,
        max_queue=config.max_queue,
        max_queue_per_camera=config.max_queue_per_camera,
        deadline_admission=config.deadline_admission,
        on_batch=lambda size, seconds: metrics_holder["m"].observe_batch(size, seconds),
        policy=config.policy,
    )
    metrics = TeacherMetrics(queue_depth=batcher.queue_depth)
    metrics_holder["m"] = metrics
    auth = TokenAuth(config.tokens) if config.tokens else None
    limiter = limiter_from_config(config)
    metrics.count_refusals(limiter.refusals)
    servicer = TeacherServicer(
        batcher,
        model_name=labeler.model_name,
        model_version=labeler.model_version,
        default_score_threshold=config.score_threshold,
        metrics=metrics,
        auth=auth,
        max_pixels=config.max_pixels,
        max_message_bytes=config.max_message_bytes,
        limiter=limiter,
        stream_idle_s=config.stream_idle_s,
        first_frame_s=config.first_frame_s,
    )
    # Held-back refusals wait in calls of their own: gRPC's pool has room for them beyond max_concurrent_rpcs.
    rpcs = config.max_concurrent_rpcs + (config.max_held if config.max_hold_s > 0 else 0)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=rpcs, thread_name_prefix="teacher-rpc"),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # never share a port silently with another server
        ],
        maximum_concurrent_rpcs=rpcs,
    )
    add_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    # With tokens, nothing on the gRPC port answers without one: unauthenticated health or
    # reflection streams would hold gRPC's call slots that the cameras need.
    if not auth:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection if config.reflection is not None else not auth:
        names = (SERVICE_NAME, reflection.SERVICE_NAME) + (() if auth else (health.SERVICE_NAME,))
        reflection.enable_server_reflection(names, server)
    health_server = None
    health_port = None
    if config.health_port is not None:
        health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="teacher-health"),
                                    options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=16)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        try:
            health_port = health_server.add_insecure_port(f"{config.health_host}:{config.health_port}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen for health checks on {config.health_host}:{config.health_port}: {exc}") from exc

    address = f"{config.host}:{config.port}"
    tls = bool(config.tls_cert or config.tls_key)
    try:
        if tls:
            if not (config.tls_cert and config.tls_key):
                raise ValueError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
            credentials = grpc.ssl_server_credentials(
                [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}; is the port in use? pick another with --port") from exc
    if port == 0:
        raise OSError(f"cannot listen on {address}; is the port in use? pick another with --port")

    batcher.start()
    server.start()
    if health_server is not None:
        health_server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = None
    if config.metrics_port is not None:
        if config.metrics_tls and not (config.tls_cert and config.tls_key):
            raise ValueError("metrics over TLS needs the server's certificate and key (--tls-cert, --tls-key)")
        metrics_port = metrics.serve_http(
            config.metrics_port, config.metrics_host, token=config.metrics_token,
            certfile=str(config.tls_cert) if config.metrics_tls else None,
            keyfile=str(config.tls_key) if config.metrics_tls else None,
        )
    handle = ServerHandle(
        host=config.host, port=port, tls=tls, labeler=labeler, batcher=batcher, metrics=metrics,
        metrics_port=metrics_port, metrics_tls=config.metrics_tls, health_port=health_port,
        _server=server, _health=health_servicer, _servicer=servicer, _health_server=health_server,
    )
    log.info(
        "teacher %s (%s) listening on %s%s; batching max %d frames / %.1f ms, queue %d%s",
        labeler.model_name,
        labeler.model_version,
        handle.url,
        f", metrics on {handle.metrics_url}" if metrics_port is not None else "",
        config.max_batch,
        config.max_delay_ms,
        config.max_queue,
        ", tokens required" if auth else "",
    )
    return handle


def limiter_from_config(config: ServerConfig) -> CallLimiter:
    """The call limits, pacing and frame-memory bound of `config` (one builder for every engine)."""
    max_calls = config.max_calls
    if max_calls is None:
        max_calls = max(1, config.max_concurrent_rpcs - max(1, config.max_concurrent_rpcs // 16))
    if max_calls >= config.max_concurrent_rpcs:
        raise ValueError(f"max_calls ({max_calls}) must stay below max_concurrent_rpcs ({config.max_concurrent_rpcs}), "
                         "or gRPC refuses calls before the server can say when to come back")
    # The limits the config names (same field names) pass through; the rest keep CallLimits' defaults.
    limits = {f.name: getattr(config, f.name) for f in fields(CallLimits) if hasattr(config, f.name)}
    limits.update(max_calls=max_calls, max_held_per_camera=max(1, config.max_held // 2))
    return CallLimiter(CallLimits(**limits))


def tokens_from_file(path: Optional[Union[str, Path]]) -> Optional[dict[str, str]]:
    """For the CLI: None stays None, a path is read with load_tokens."""
    return load_tokens(path) if path else None
