"""`jitnet teacher`: serve a teacher model over gRPC until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import logging
import signal
import threading

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
    parser.add_argument("--max-batch", type=int, default=8, help="frames per model call at most (1 = no batching)")
    parser.add_argument("--max-delay-ms", type=float, default=10.0, help="how long a frame may wait for others to batch with")
    parser.add_argument("--max-queue", type=int, default=64, help="frames waiting at most; then RESOURCE_EXHAUSTED + retry-after")
    parser.add_argument("--max-queue-per-camera", type=int, default=None, help="frames one camera may have waiting (default max-queue/4)")
    parser.add_argument("--max-message-mb", type=float, default=32.0, help="largest request accepted, MiB")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="default detection score threshold")
    parser.add_argument("--tokens", default=None, help="file of per-camera bearer tokens ('camera_id token' lines or JSON)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate chain (enables TLS, with --tls-key)")
    parser.add_argument("--tls-key", default=None, help="PEM private key")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to finish in-flight requests on shutdown")


def run(args: argparse.Namespace) -> int:
    from teacher_server.backends import BackendUnavailable, load_backend
    from teacher_server.server import ServerConfig, start_server, tokens_from_file

    try:
        backend = load_backend(args.backend, weights=args.weights, device=args.device)
    except BackendUnavailable as exc:
        log.error("%s", exc)
        return 2
    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        max_queue_per_camera=args.max_queue_per_camera,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        score_threshold=args.score_threshold,
        tokens=tokens_from_file(args.tokens),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.host,
    )
    try:
        handle = start_server(backend, config)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop_requested.wait(1.0):
        pass
    handle.stop(args.grace)
    return 0
