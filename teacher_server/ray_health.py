"""`--health-port` for the Ray engine: grpc.health.v1 on its own plain-text port, beside the fleet.

The native server serves health checks on a separate local port for
orchestrators (and, with tokens, only there). A fleet started by start_fleet
does the same from the starting process: SERVING while Serve reports the
application RUNNING (or redeploying a replica), NOT_SERVING otherwise and
while it stops. Check and Watch, as on the native server.
"""
from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import teacher_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name
#: Application states in which the fleet answers frames (DEPLOYING: Serve is replacing or adding a replica).
SERVING_STATES = ("RUNNING", "DEPLOYING")


class FleetHealth:
    """A health server whose status follows `serve.status()` of one application, polled every `every_s`."""

    def __init__(self, app_name: str, host: str, port: int, every_s: float = 1.0) -> None:
        self.app_name = app_name
        self._every_s = every_s
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fleet-health"),
                                   options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=16)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        try:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen for health checks on {host}:{port}: {exc}; pick another --health-port") from exc
        if self.port == 0:
            raise OSError(f"cannot listen for health checks on {host}:{port}; pick another --health-port")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="fleet-health-poll", daemon=True)

    def start(self, serving: bool = True) -> "FleetHealth":
        self._set(serving)
        self._server.start()
        self._thread.start()
        return self

    def _set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self._health.set(name, status)

    def _poll(self) -> None:
        from ray import serve

        while not self._stop.wait(self._every_s):
            try:
                app = serve.status().applications.get(self.app_name)
                serving = app is not None and str(getattr(app.status, "value", app.status)) in SERVING_STATES
            except Exception:  # noqa: BLE001 - the controller is unreachable: not serving, whatever the reason
                log.debug("could not read the fleet's status", exc_info=True)
                serving = False
            if not self._stop.is_set():
                self._set(serving)

    def stop(self) -> None:
        """NOT_SERVING to every watcher, then close the port."""
        self._stop.set()
        self._health.enter_graceful_shutdown()
        self._server.stop(0)
        if self._thread.is_alive():
            self._thread.join(self._every_s + 30)
