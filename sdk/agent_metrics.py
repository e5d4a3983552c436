"""The agent's own Prometheus endpoint and health check (``--metrics-port``).

``GET /metrics`` serves the text exposition format (version 0.0.4) that
Prometheus scrapes; ``GET /healthz`` answers 200 while the agent loop is alive
(``{"status": "ok"|"degraded", ...}``: degraded while the teacher or the
source is down) and ``GET /readyz`` answers 503 while degraded, for load
balancers and orchestrators that act on it.  Written without a client
library so the edge install needs nothing more; values are read from the
agent and the stream when scraped, so a stalled loop shows as stalled.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

log = logging.getLogger(__name__)

TEACHER_STATES = ("ok", "waiting", "unavailable", "rejected", "off")
SOURCE_STATES = ("ok", "reconnecting", "ended")
PREFIX = "jitnet_agent_"


class AgentMetrics:
    """Per-frame bookkeeping (``observe``) and an HTTP server that exposes it."""

    def __init__(self, *, camera_id: str = "cam0", fps_window_s: float = 10.0) -> None:
        self.camera_id = camera_id
        self._lock = threading.Lock()
        self._window_s = fps_window_s
        self._recent: collections.deque[float] = collections.deque()  # monotonic times of recent frames
        self.frames = 0
        self.teacher_frames = 0
        self.updates = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.train_s = 0.0
        self.infer_s = 0.0
        self.last_infer_ms = 0.0
        self.last_train_ms = 0.0
        self.last_accuracy: Optional[float] = None
        self.stride = 0
        self.teacher_state = "off"
        self.teacher_failures = 0
        self.last_frame_at: Optional[float] = None
        self._stream: Any = None
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- the agent loop ----------------------------------------------------------------------
    def attach_stream(self, stream: Any) -> None:
        """The FrameStream whose stats (dropped frames, state, reconnects) are read at scrape time."""
        self._stream = stream

    def observe(self, result: Any, teacher_failures: int = 0) -> None:
        now = time.monotonic()
        t = result.timings
        with self._lock:
            self.frames += 1
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self._window_s:
                self._recent.popleft()
            self.teacher_frames += int(result.teacher_labelled)
            self.updates += result.updates
            self.bytes_up += result.bytes_up
            self.bytes_down += result.bytes_down
            self.train_s += t.get("train_ms", 0.0) / 1e3
            self.infer_s += t.get("infer_ms", 0.0) / 1e3
            self.last_infer_ms = t.get("infer_ms", 0.0)
            if t.get("train_ms"):
                self.last_train_ms = t["train_ms"]
            accuracy = result.accuracy_after if result.accuracy_after is not None else result.accuracy_before
            if accuracy is not None:
                self.last_accuracy = accuracy
            self.stride = result.stride
            self.teacher_state = result.teacher_state
            self.teacher_failures = teacher_failures
            self.last_frame_at = now

    # -- what is served ----------------------------------------------------------------------
    def source_state(self) -> str:
        return getattr(self._stream, "state", "ok") if self._stream is not None else "ok"

    def health(self) -> dict[str, Any]:
        source = self.source_state()
        with self._lock:
            teacher = self.teacher_state
            age = None if self.last_frame_at is None else time.monotonic() - self.last_frame_at
        degraded = teacher in ("unavailable", "rejected") or source == "reconnecting"
        return {"status": "degraded" if degraded else "ok", "alive": True, "teacher_state": teacher,
                "source_state": source, "seconds_since_last_frame": None if age is None else round(age, 3),
                "camera_id": self.camera_id}

    def render(self) -> str:
        stream = self._stream
        stats = getattr(stream, "stats", None)
        source = self.source_state()
        with self._lock:
            now = time.monotonic()
            recent = [x for x in self._recent if x >= now - self._window_s]
            span = (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
            fps = (len(recent) - 1) / span if span > 0 else 0.0
            label = f'camera_id="{_escape(self.camera_id)}"'
            rows: list[tuple[str, str, str, list[tuple[str, float]]]] = [
                ("frames_total", "counter", "Frames segmented.", [("", self.frames)]),
                ("dropped_frames_total", "counter", "Frames the live reader dropped (the agent was busy).",
                 [("", getattr(stats, "dropped", 0))]),
                ("teacher_frames_total", "counter", "Frames whose teacher labels were learnt from.",
                 [("", self.teacher_frames)]),
                ("teacher_failures_total", "counter", "Teacher requests that failed or answered unusably.",
                 [("", self.teacher_failures)]),
                ("updates_total", "counter", "Gradient steps taken.", [("", self.updates)]),
                ("reconnects_total", "counter", "Times the source came back after a failure.",
                 [("", getattr(stream, "reconnects", 0))]),
                ("bytes_up_total", "counter", "Bytes of frames sent to the teacher.", [("", self.bytes_up)]),
                ("bytes_down_total", "counter", "Bytes of labels received from the teacher.", [("", self.bytes_down)]),
                ("train_seconds_total", "counter", "Seconds spent in train steps.", [("", self.train_s)]),
                ("inference_seconds_total", "counter", "Seconds spent in student inference.", [("", self.infer_s)]),
                ("fps", "gauge", f"Frames per second over the last {self._window_s:g} s.", [("", fps)]),
                ("teacher_fraction", "gauge", "Share of frames learnt from the teacher.",
                 [("", self.teacher_frames / self.frames if self.frames else 0.0)]),
                ("stride", "gauge", "Frames between teacher requests.", [("", self.stride)]),
                ("last_accuracy", "gauge", "Student mean IoU against the teacher on the last teacher frame.",
                 [("", self.last_accuracy if self.last_accuracy is not None else float("nan"))]),
                ("inference_ms", "gauge", "Student inference time of the last frame.", [("", self.last_infer_ms)]),
                ("train_ms", "gauge", "Training time of the last frame that trained.", [("", self.last_train_ms)]),
                ("teacher_state", "gauge", "1 for the teacher's current state.",
                 [(f'state="{s}"', float(s == self.teacher_state)) for s in TEACHER_STATES]),
                ("source_state", "gauge", "1 for the source's current state.",
                 [(f'state="{s}"', float(s == source)) for s in SOURCE_STATES]),
            ]
        lines = []
        for name, kind, help_text, samples in rows:
            full = PREFIX + name
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {kind}")
            for extra, value in samples:
                labels = label + ("," + extra if extra else "")
                lines.append(f"{full}{{{labels}}} {_number(value)}")
        return "\n".join(lines) + "\n"

    # -- the server --------------------------------------------------------------------------
    def serve(self, port: int, host: str = "127.0.0.1") -> "AgentMetrics":
        """Serve on ``host:port`` from a daemon thread (port 0: any free port, see ``url``)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = metrics.render().encode(), 200, "text/plain; version=0.0.4; charset=utf-8"
                elif path in ("/healthz", "/readyz"):
                    health = metrics.health()
                    status = 503 if path == "/readyz" and health["status"] != "ok" else 200
                    body, ctype = json.dumps(health).encode(), "application/json"
                else:
                    body, status, ctype = b"try /metrics, /healthz or /readyz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="agent-metrics", daemon=True)
        self._thread.start()
        log.info("agent metrics on %s/metrics", self.url)
        return self

    @property
    def url(self) -> Optional[str]:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    value = float(value)
    if value != value:
        return "NaN"
    return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
