"""What `--engine ray` is configured with: FleetOptions, and which ServerConfig settings it honours.

Every field of ServerConfig is in exactly one of two places here: `HONOURED`
(what the Ray engine does with it, and whether that holds per ingress replica or
for the whole fleet) or `check_settings` (a value the engine cannot honour stops
the start with a ValueError whose single line names the setting and what to do).
A test holds the two together, so a new ServerConfig field cannot be silently
ignored by the Ray engine: it fails that test until it is classified here.
docs/fleet.md's guarantee table is the prose of this module.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from teacher_server.server import ServerConfig

#: The Serve application name; clients send it as `application` metadata when several apps share a proxy.
APP_NAME = "jitnet-teacher"


@dataclass(frozen=True)
class FleetOptions:
    """How many model replicas, with what, where (the native ServerConfig says everything else)."""

    #: Fixed replica count; ignored when min_replicas/max_replicas ask for autoscaling.
    replicas: int = 1
    min_replicas: Optional[int] = None
    max_replicas: Optional[int] = None
    gpus_per_replica: float = 0.0
    #: torch threads per replica, and the CPUs Ray reserves for it.
    threads_per_replica: int = 1
    #: None: start a Ray on this machine (stopped on exit); "auto" or "ray://host:10001": join that cluster.
    address: Optional[str] = None
    #: Serve always starts its HTTP proxy beside the gRPC one; this is its port.
    http_port: int = 8000
    app_name: str = APP_NAME
    #: Serve's end-to-end limit per request (its proxy does not see the client's deadline).
    request_timeout_s: Optional[float] = None
    ingress_replicas: int = 1
    #: How long a stopping replica may finish what it has.
    grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.threads_per_replica < 1 or self.ingress_replicas < 1:
            raise ValueError("replicas, threads per replica and ingress replicas must be >= 1")
        if self.gpus_per_replica < 0:
            raise ValueError(f"gpus per replica must be >= 0, got {self.gpus_per_replica}")
        low, high = self.min_replicas, self.max_replicas
        if (low is None) != (high is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if low is not None and not 0 <= low <= high or high == 0:
            raise ValueError(f"need 0 <= min replicas <= max replicas, max >= 1; got {low}, {high}")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas


#: Hosts Serve's gRPC proxy can honour: it always listens on [::]:port, every interface.
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")
#: Metrics hosts a Ray started here can honour besides the wildcard: Ray's metrics agent binds
#: loopback when the node's address is 127.0.0.1, which start_fleet then makes it (loopback_node).
LOCAL_HOSTS = ("127.0.0.1", "localhost")

#: Settings the Ray engine honours as the native engine does, and where.
HONOURED: dict[str, str] = {
    "port": "Serve's gRPC proxy port on every node (a fixed port; 0 is refused)",
    "max_batch": "@serve.batch max_batch_size in each model replica",
    "max_delay_ms": "@serve.batch batch_wait_timeout_s in each model replica",
    "max_queue": "the ingress's policy queue (per ingress replica) and Serve's max_queued_requests per caller",
    "max_queue_per_camera": "the ingress's policy queue (per ingress replica)",
    "max_message_bytes": "the proxy's message cap (RAY_SERVE_GRPC_MAX_MESSAGE_SIZE) and the ingress's own check",
    "max_pixels": "the ingress's TeacherServicer, before decoding",
    "max_concurrent_rpcs": "the ingress deployment's max_ongoing_requests and call threads (per ingress replica)",
    "max_calls": "the ingress's CallLimiter (per ingress replica)",
    "max_calls_per_camera": "the ingress's CallLimiter (per ingress replica)",
    "max_streams_per_camera": "the ingress's CallLimiter (per ingress replica)",
    "max_frame_bytes": "the ingress's CallLimiter (per ingress replica; each model replica holds only its batch)",
    "rate_per_camera": "the ingress's CallLimiter pacing (per ingress replica)",
    "burst_per_camera": "the ingress's CallLimiter pacing (per ingress replica)",
    "max_retry_after_s": "the ingress's CallLimiter hints",
    "max_hold_s": "the ingress's TeacherServicer holds refusals back in an ingress thread",
    "max_held": "the ingress's CallLimiter, with as many extra ingress threads and ongoing requests (per ingress replica)",
    "forget_after_s": "the ingress's CallLimiter and policy queue forget idle cameras",
    "stream_idle_s": "the ingress's TeacherServicer closes the stream",
    "first_frame_s": "the ingress's TeacherServicer closes a stream without a first frame",
    "deadline_admission": "the ingress's DeadlineAdmission, on the deadline it sees: jitnet-deadline-ms metadata and "
                          "Serve's request_timeout_s (the proxy does not pass gRPC's deadline on)",
    "reflection": "Serve's gRPC proxy enable_reflection (the proxy's, shared by every application on it)",
    "score_threshold": "each model replica's Labeler and the ingress's GetInfo",
    "tokens": "the ingress's TeacherServicer, from the gRPC metadata the proxy passes on",
    "warmup": "each model replica runs one frame before it is ready",
    "policy": "the ingress's policy queue (fair | need), per ingress replica, for frames waiting beyond the replicas' slots",
}
#: Settings check_settings decides on (honoured under some conditions, refused otherwise).
CHECKED = ("host", "tls_cert", "tls_key", "health_port", "health_host", "metrics_port", "metrics_host",
           "metrics_token", "metrics_tls")


def _refuse(setting: str, why: str) -> ValueError:
    return ValueError(f"--engine ray cannot honour {setting}: {why}")


def check_settings(config: "ServerConfig", fleet: FleetOptions, *, config_file: bool = False) -> None:
    """Raise ValueError (one line, naming the setting) for a setting the Ray engine cannot honour.

    `config_file`: the application is built by Serve from a config file (build_app), so no
    process of ours stays beside it to serve a health port or choose Ray's metrics port.
    """
    from teacher_server.scheduling import POLICIES

    if config.tls_cert or config.tls_key:
        raise _refuse("tls_cert/tls_key (--tls-cert/--tls-key)", "Serve's gRPC proxy has no TLS; terminate TLS in front of "
                      "it (a load balancer) or use --engine grpc")
    if config.port == 0:
        raise _refuse("port=0 (--port 0)", "Serve's proxy binds one fixed port on every node; pass --port N")
    if config.host not in WILDCARD_HOSTS:
        raise _refuse(f"host={config.host!r} (--host)", "Serve's gRPC proxy always listens on every interface ([::]:port); "
                      "pass --host 0.0.0.0 and firewall the port, or use --engine grpc to listen on one address")
    if config.policy not in POLICIES:
        raise _refuse(f"policy={config.policy!r} (--policy)", f"use one of {', '.join(POLICIES)}")
    if config.metrics_token:
        raise _refuse("metrics_token (--metrics-token-file)", "Ray's metrics export port has no authentication; keep it "
                      "on 127.0.0.1 behind an authenticating proxy, or use --engine grpc")
    if config.metrics_tls:
        raise _refuse("metrics_tls (--metrics-tls)", "Ray's metrics export port has no TLS; put a TLS proxy in front of "
                      "it, or use --engine grpc")
    if config.health_port is not None and config_file:
        raise _refuse("health_port (--health-port) in a Serve config file", "no process of ours stays beside the "
                      "application to serve it; use Serve's own health (/ray.serve.RayServeAPIService/Healthz, or "
                      "grpc.health.v1 Check on the gRPC port)")
    if config.metrics_port is not None:
        if config_file:
            raise _refuse("metrics_port in a Serve config file", "Ray's metrics port is the cluster's "
                          "(`ray start --metrics-export-port`); leave metrics_port out")
        if fleet.address:
            raise _refuse(f"metrics_port={config.metrics_port} (--metrics-port) with --address", "a cluster's metrics "
                          "are on each node's own Ray metrics export port, chosen by `ray start --metrics-export-port`; "
                          "pass --metrics-port -1 and scrape those")
        if config.metrics_host not in WILDCARD_HOSTS + LOCAL_HOSTS:
            raise _refuse(f"metrics_host={config.metrics_host!r} (--metrics-host)", "Ray's metrics agent listens either "
                          "on 127.0.0.1 or on every interface; pass --metrics-host 127.0.0.1 or 0.0.0.0")
    # The limits' own checks (max_calls against max_concurrent_rpcs, ...), by start_server's builder.
    from teacher_server.server import limiter_from_config

    limiter_from_config(config)


def unclassified() -> list[str]:
    """ServerConfig fields neither HONOURED nor CHECKED (must be empty; the tests assert it)."""
    from teacher_server.server import ServerConfig

    return [f.name for f in fields(ServerConfig) if f.name not in HONOURED and f.name not in CHECKED]


def loopback_node(config: "ServerConfig") -> bool:
    """Whether a Ray started here takes 127.0.0.1 as its node address (so its metrics agent, and its other
    ports, listen on loopback only): always, except when metrics are asked for on every interface."""
    return not (config.metrics_port is not None and config.metrics_host in WILDCARD_HOSTS)


def check_running_serve(config: "ServerConfig", fleet: FleetOptions, grpc_options: Any, http_options: Any,
                        servicer_functions: tuple[str, ...], reflection: bool) -> None:
    """Serve was already running: its proxies keep their options, so ours must equal them (else refuse)."""
    mismatches = []
    if grpc_options.port != config.port:
        mismatches.append(f"port={config.port} (the running proxies listen on {grpc_options.port})")
    missing = [f for f in servicer_functions if f not in grpc_options.grpc_servicer_functions]
    if missing:
        mismatches.append(f"the proxies' grpc_servicer_functions lack {missing}")
    if grpc_options.request_timeout_s != fleet.request_timeout_s:
        mismatches.append(f"request_timeout_s={fleet.request_timeout_s} (the proxies use {grpc_options.request_timeout_s})")
    if bool(getattr(grpc_options, "enable_reflection", True)) != reflection:
        mismatches.append(f"reflection={reflection} (the proxies have enable_reflection={grpc_options.enable_reflection})")
    if http_options is not None and http_options.port != fleet.http_port:
        mismatches.append(f"http_port={fleet.http_port} (the running HTTP proxies use {http_options.port})")
    if mismatches:
        raise _refuse("; ".join(mismatches), "Serve is already running in this cluster and keeps its proxies' options; "
                      "match them or `serve shutdown` first")
