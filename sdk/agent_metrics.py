"""The agent's own Prometheus endpoint and health check (``--metrics-port``).

``GET /metrics`` serves the text exposition format (version 0.0.4) that
Prometheus scrapes; ``GET /healthz`` answers 200 while the agent loop is alive
(``{"status": "ok"|"degraded", ...}``: degraded while the teacher or the
source is down) and ``GET /readyz`` answers 503 while degraded, for load
balancers and orchestrators that act on it.  Written without a client
library so the edge install needs nothing more.  Nothing is counted here:
every value is read, when scraped, from the agent's own counters
(``edge_agent.counters.AgentCounters``, the numbers the run summary reports
too) and from the stream (dropped frames, reconnects, state), so a stalled
loop shows as stalled.  A new ``Session.segment()`` brings a new agent and its
counters start again from zero (a counter reset, which Prometheus' rate() handles).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from edge_agent.counters import FUSION_KEYS, AgentCounters

log = logging.getLogger(__name__)

TEACHER_STATES = ("ok", "waiting", "unavailable", "rejected", "off")
SOURCE_STATES = ("ok", "reconnecting", "ended")
PREFIX = "jitnet_agent_"


class AgentMetrics:
    """An HTTP server that exposes an agent's counters and its stream's state."""

    def __init__(self, *, camera_id: str = "cam0") -> None:
        self.camera_id = camera_id
        self._counters = AgentCounters()  # zeros until an agent is attached
        self._stream: Any = None
        self._server: Optional[ThreadingHTTPServer] = None

    # -- what is read ------------------------------------------------------------------------
    def attach_stream(self, stream: Any) -> None:
        """The FrameStream whose stats (dropped frames, state, reconnects) are read at scrape time."""
        self._stream = stream

    def attach_counters(self, counters: AgentCounters) -> None:
        """The agent's counters (``DistillationAgent.counters``), read at scrape time."""
        self._counters = counters

    # -- what is served ----------------------------------------------------------------------
    def source_state(self) -> str:
        return getattr(self._stream, "state", "ok") if self._stream is not None else "ok"

    def health(self) -> dict[str, Any]:
        source = self.source_state()
        c = self._counters.snapshot()
        teacher, at = c["teacher_state"], c["last_frame_at"]
        age = None if at is None else time.monotonic() - at
        degraded = teacher in ("unavailable", "rejected") or source == "reconnecting"
        return {"status": "degraded" if degraded else "ok", "alive": True, "teacher_state": teacher,
                "source_state": source, "seconds_since_last_frame": None if age is None else round(age, 3),
                "camera_id": self.camera_id}

    def render(self) -> str:
        stream = self._stream
        stats = getattr(stream, "stats", None)
        source = self.source_state()
        c = self._counters.snapshot()
        ms = c["time_ms_total"]
        infer_p50, fusion_p50 = c["infer_ms_p50"], c["flow_fusion_ms_p50"]
        label = f'camera_id="{_escape(self.camera_id)}"'
        rows: list[tuple[str, str, str, list[tuple[str, float]]]] = [
            ("frames_total", "counter", "Frames segmented.", [("", c["frames"])]),
            ("dropped_frames_total", "counter", "Frames the live reader dropped (the agent was busy).",
             [("", getattr(stats, "dropped", 0))]),
            ("teacher_frames_total", "counter", "Frames whose teacher labels were learnt from.",
             [("", c["teacher_frames"])]),
            ("teacher_failures_total", "counter", "Teacher requests that failed or answered unusably.",
             [("", c["teacher_failures"])]),
            ("updates_total", "counter", "Gradient steps taken.", [("", c["updates"])]),
            ("reconnects_total", "counter", "Times the source came back after a failure.",
             [("", getattr(stream, "reconnects", 0))]),
            ("bytes_up_total", "counter", "Bytes the network carried to the teacher (every attempt).",
             [("", c["bytes_up"])]),
            ("bytes_down_total", "counter", "Bytes the network carried back from the teacher.",
             [("", c["bytes_down"])]),
            ("train_seconds_total", "counter", "Seconds spent in train steps.", [("", ms.get("train_ms", 0.0) / 1e3)]),
            ("inference_seconds_total", "counter", "Seconds spent in student inference.",
             [("", ms.get("infer_ms", 0.0) / 1e3)]),
            ("flow_seconds_total", "counter", "Seconds spent carrying the teacher's answer by optical flow.",
             [("", ms.get("flow_ms", 0.0) / 1e3)]),
            ("fusion_seconds_total", "counter", "Seconds spent fusing the carried answer with the student's.",
             [("", ms.get("fusion_ms", 0.0) / 1e3)]),
            ("scene_cuts_total", "counter", "Frames that looked like a scene cut (the carried answer was dropped).",
             [("", c["scene_cuts"])]),
            ("fps", "gauge", f"Frames per second over the last {self._counters.rate_window_s:g} s.", [("", c["fps"])]),
            ("teacher_fraction", "gauge", "Share of frames learnt from the teacher.",
             [("", c["teacher_frames"] / c["frames"] if c["frames"] else 0.0)]),
            ("stride", "gauge", "Frames between teacher requests.", [("", c["stride"])]),
            ("last_accuracy", "gauge", "Student mean IoU against the teacher on the last teacher frame.",
             [("", c["last_accuracy"] if c["last_accuracy"] is not None else float("nan"))]),
            ("inference_ms", "gauge", "Student inference time of the last frame.", [("", c["last_infer_ms"])]),
            ("train_ms", "gauge", "Training time of the last frame that trained.", [("", c["last_train_ms"])]),
            ("flow_fusion_ms", "gauge", "Median flow + fusion time per frame (" + " + ".join(FUSION_KEYS) + ").",
             [("", fusion_p50)]),
            ("flow_fusion_share_of_inference", "gauge",
             "Median flow + fusion time per frame over the median student inference time.",
             [("", fusion_p50 / infer_p50 if infer_p50 > 0 else float("nan"))]),
            ("carried_fraction_mean", "gauge", "Mean share of output pixels taken from the carried teacher answer.",
             [("", c["carried_fraction_sum"] / c["frames"] if c["frames"] else 0.0)]),
            ("teacher_state", "gauge", "1 for the teacher's current state.",
             [(f'state="{s}"', float(s == c["teacher_state"])) for s in TEACHER_STATES]),
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
        threading.Thread(target=self._server.serve_forever, name="agent-metrics", daemon=True).start()
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
