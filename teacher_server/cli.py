"""`jitnet teacher`: serve a teacher model over gRPC until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from teacher_server.server import ServerConfig

log = logging.getLogger(__name__)

BACKENDS = ("yolov5s-seg", "yolov7-seg", "maskrcnn", "maskrcnn_v2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="yolov5s-seg", choices=BACKENDS,
                        help="teacher model (yolo*: GPL-3.0 extra with bundled weights; maskrcnn*: needs --weights or torch's cache)")
    parser.add_argument("--weights", default=None, help="weights file (required for maskrcnn unless in torch's cache)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (0 = any free port)")
    parser.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics HTTP port (-1 = off)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address /metrics listens on (plain HTTP, no auth: keep it local or behind a proxy)")
    parser.add_argument("--metrics-token-file", default=None, help="file holding a bearer token that /metrics then requires")
    parser.add_argument("--metrics-tls", action="store_true", help="serve /metrics over HTTPS with --tls-cert/--tls-key")
    parser.add_argument("--health-port", type=int, default=None,
                        help="serve gRPC health checks on this local port too (with --tokens the only place they are)")
    parser.add_argument("--health-host", default="127.0.0.1", help="address of --health-port")
    parser.add_argument("--max-batch", type=int, default=8, help="frames per model call at most (1 = no batching)")
    parser.add_argument("--max-delay-ms", type=float, default=10.0, help="how long a frame may wait for others to batch with")
    parser.add_argument("--max-queue", type=int, default=64, help="frames waiting at most; then RESOURCE_EXHAUSTED + retry-after")
    parser.add_argument("--max-queue-per-camera", type=int, default=None, help="frames one camera may have waiting (default 4, at most max-queue/4)")
    parser.add_argument("--policy", default="fair", choices=("fair", "need"),
                        help="who is served first when frames wait: fair (round-robin) or need (the camera whose "
                             "student is furthest below its threshold; aging-bounded; stride-stretch hints when saturated)")
    parser.add_argument("--max-message-mb", type=float, default=32.0, help="largest request accepted, MiB")
    parser.add_argument("--max-pixels", type=int, default=None, help="largest frame accepted, pixels (default DCI 4K, 4096x2160)")
    parser.add_argument("--max-frame-mb", type=float, default=1024.0, help="decoded frames held at once, MiB (decoding, queued, computing)")
    parser.add_argument("--max-calls", type=int, default=None, help="calls taken at once (default: gRPC's limit of 256 less 16)")
    parser.add_argument("--max-calls-per-camera", type=int, default=16, help="calls one camera may hold at once")
    parser.add_argument("--max-streams-per-camera", type=int, default=2, help="LabelStreams one camera may keep open")
    parser.add_argument("--stream-idle-s", type=float, default=60.0, help="end a LabelStream that carried no frame for this long")
    parser.add_argument("--first-frame-s", type=float, default=5.0,
                        help="end a LabelStream that sends no frame this soon after opening (it holds a call slot)")
    parser.add_argument("--rate-per-camera", type=float, default=20.0,
                        help="calls plus stream frames per second one camera may send (token bucket; 0 = no bucket)")
    parser.add_argument("--burst-per-camera", type=int, default=40, help="calls or frames one camera may send at once")
    parser.add_argument("--max-retry-after-s", type=float, default=8.0,
                        help="a camera calling before its retry-after hint expired gets it doubled, up to this")
    parser.add_argument("--max-hold-s", type=float, default=1.0,
                        help="hold refusals to cameras that keep ignoring hints this long (0 = answer at once)")
    parser.add_argument("--admission", default="deadline", choices=("deadline", "queue"),
                        help="deadline: refuse frames the measured service time cannot answer within their deadline (default); "
                             "queue: the old rule, admit while the queue has room")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="default detection score threshold")
    parser.add_argument("--tokens", default=None, help="file of per-camera bearer tokens ('camera_id token' lines or JSON)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate chain (enables TLS, with --tls-key)")
    parser.add_argument("--tls-key", default=None, help="PEM private key")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to finish in-flight requests on shutdown")
    parser.add_argument("--engine", default="grpc", choices=("grpc", "ray"),
                        help="grpc: this process serves (default); ray: Ray Serve replicas behind its gRPC proxy (fleet extra, docs/fleet.md)")
    fleet = parser.add_argument_group("--engine ray")
    fleet.add_argument("--replicas", type=int, default=1, help="model replicas (fixed count)")
    fleet.add_argument("--min-replicas", type=int, default=None, help="autoscale on ongoing requests between min and max replicas")
    fleet.add_argument("--max-replicas", type=int, default=None, help="see --min-replicas")
    fleet.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs Ray gives each replica (fractions share one)")
    fleet.add_argument("--threads-per-replica", type=int, default=1, help="torch threads, and CPUs reserved, per replica")
    fleet.add_argument("--address", default=None, help="join this Ray cluster (auto, ray://host:10001); default: start one here, stop it on exit")
    fleet.add_argument("--http-port", type=int, default=8000, help="port of the HTTP proxy Serve starts beside the gRPC one")
    fleet.add_argument("--app-name", default="jitnet-teacher", help="Serve application name (clients' `application` metadata)")


def run(args: argparse.Namespace) -> int:
    from teacher_server.backends import BackendUnavailable, load_backend
    from teacher_server.server import start_server

    if args.engine == "ray":
        return _run_fleet(args)
    try:
        backend = load_backend(args.backend, weights=args.weights, device=args.device)
    except BackendUnavailable as exc:
        log.error("%s", exc)
        return 2
    try:
        handle = start_server(backend, server_config(args))
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    stop = stop_signals()
    while not stop.wait(1.0):
        pass
    handle.stop(args.grace)
    return 0


def server_config(args: argparse.Namespace) -> "ServerConfig":
    """The limits and ports both engines take from the command line.

    A flag named like a ServerConfig field (--max-calls-per-camera: max_calls_per_camera) is that field;
    the ones below are converted (units, "off" values, files).
    """
    from teacher_server.server import ServerConfig, tokens_from_file

    given = vars(args)
    config = {f.name: given[f.name] for f in fields(ServerConfig) if f.name in given}
    if not args.max_pixels:
        del config["max_pixels"]  # ServerConfig's default
    config.update(
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_frame_bytes=int(args.max_frame_mb * 1024 * 1024),
        rate_per_camera=args.rate_per_camera or None,
        deadline_admission=args.admission == "deadline",
        tokens=tokens_from_file(args.tokens),
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_token=Path(args.metrics_token_file).read_text().strip() if args.metrics_token_file else None,
    )
    return ServerConfig(**config)


def _run_fleet(args: argparse.Namespace) -> int:
    from teacher_server.ray_engine import FleetOptions, start_fleet

    stop = stop_signals()
    try:
        options = FleetOptions(
            replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
            gpus_per_replica=args.gpus_per_replica, threads_per_replica=args.threads_per_replica,
            address=args.address, http_port=args.http_port, app_name=args.app_name, grace_s=args.grace,
        )
        device = None if args.device == "cpu" and args.gpus_per_replica > 0 else args.device
        handle = start_fleet(args.backend, server_config(args), options, weights=args.weights, device=device)
    except (OSError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    stop_signals(stop)  # again: ray.init installs handlers of its own
    while not stop.wait(1.0):
        pass
    handle.stop(args.grace)
    return 0


def stop_signals(stop_requested: Optional[threading.Event] = None) -> threading.Event:
    """An event that SIGINT and SIGTERM set (install it before a slow start-up, which then stops cleanly)."""
    stop_requested = stop_requested or threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop_requested
