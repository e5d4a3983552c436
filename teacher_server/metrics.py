"""Prometheus metrics of one teacher server (own registry, so servers in one process stay apart)."""
from __future__ import annotations

import hmac
import logging
import ssl
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Mapping, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)

#: Histogram buckets of request and batch seconds, and of batch sizes (the Ray engine's metrics use the same).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_LATENCY_BUCKETS, _BATCH_BUCKETS = LATENCY_BUCKETS, BATCH_BUCKETS  # until teacher_server/ray_deployments.py uses the public names


class TeacherMetrics:
    """Requests by status, batch sizes, queue depth and latency."""

    def __init__(self, queue_depth: Callable[[], float], registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "jitnet_teacher_requests", "Label requests answered, by gRPC status code", ["code"], registry=self.registry
        )
        self.latency = Histogram(
            "jitnet_teacher_request_latency_seconds",
            "Server-side time per successful label request (decode to encode)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "jitnet_teacher_batch_size", "Frames computed together", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "jitnet_teacher_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.frames = Counter("jitnet_teacher_frames_computed", "Frames the model computed", registry=self.registry)
        self.queue_depth = Gauge("jitnet_teacher_queue_depth", "Frames waiting for a batch", registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self._http = None

    def count_refusals(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Expose `source()` (refusals since start, by kind: early, rate, camera_calls, ...) as
        jitnet_teacher_refusals_total{kind}: a camera that ignores its hints shows up as `early`."""
        from prometheus_client.core import CounterMetricFamily

        class _Refusals:
            def collect(self) -> Iterable[Any]:
                family = CounterMetricFamily("jitnet_teacher_refusals", "Calls refused before any work, by limit",
                                             labels=["kind"])
                for kind, count in sorted(dict(source()).items()):
                    family.add_metric([kind], count)
                yield family

        self.registry.register(_Refusals())

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.frames.inc(size)

    def observe_request(self, code: str, seconds: Optional[float] = None) -> None:
        self.requests.labels(code=code).inc()
        if seconds is not None:
            self.latency.observe(seconds)

    def serve_http(self, port: int, host: str = "127.0.0.1", *, token: Optional[str] = None,
                   certfile: Optional[str] = None, keyfile: Optional[str] = None) -> int:
        """Expose /metrics over HTTP (HTTPS with certfile/keyfile; `Authorization: Bearer token` required
        when token is set); returns the port (useful when port=0)."""
        app = make_wsgi_app(self.registry)
        if token:
            app = _require_bearer(app, token)
        httpd = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            # The handshake runs on the request's own thread, so a client that never speaks TLS
            # cannot stall the accept loop.
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=httpd.serve_forever, name="teacher-metrics", daemon=True).start()
        self._http = httpd
        return int(httpd.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("metrics: " + format, *args)


def _require_bearer(app: Callable, token: str) -> Callable:
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"missing or invalid bearer token\n"]
        return app(environ, start_response)

    return guarded
