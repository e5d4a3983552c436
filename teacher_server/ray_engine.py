"""`jitnet teacher --engine ray`: the teacher as a Ray Serve application behind Serve's gRPC proxy.

One address, many replicas, many machines: Serve's proxy speaks our own
`jitnet.teacher.v1` proto on the gRPC port, a thin ingress deployment runs the
native servicer's checks and answers, and `replicas` model deployments (each
its own process, CPU threads or a GPU share) batch frames with `@serve.batch`
wherever the cluster has room. Agents connect exactly as to the native server.

`start_fleet` takes the native server's ServerConfig (ports, batching, queue,
tokens, limits, admission, policy) plus FleetOptions (replicas, GPUs, threads,
cluster address) and returns a handle with `url` and `stop()`. Every
ServerConfig setting is honoured or refused at start with a one-line error
naming it (teacher_server/ray_settings.py). Without an address it starts a Ray
on this machine and stops it again in `stop()`. See docs/fleet.md.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

from teacher_server.batcher import BatcherStats
from teacher_server.ray_deployments import (FleetStats, IngressSettings, ModelSettings, TeacherIngress, TeacherModel,
                                            ingress_slots)
from teacher_server.ray_health import FleetHealth
from teacher_server.ray_settings import APP_NAME, FleetOptions, check_running_serve, check_settings, loopback_node
from teacher_server.server import ServerConfig

log = logging.getLogger(__name__)

#: FleetOptions and APP_NAME live in ray_settings (what the engine is configured with); importable from here too.
__all__ = ["APP_NAME", "FleetHandle", "FleetOptions", "build_app", "fleet_from_args", "free_port", "local_ray",
           "model_deployment_options", "start_fleet"]

#: What Serve's gRPC proxy serves: our contract, and the standard health service (its Check).
SERVICER_FUNCTIONS = (
    "protos.teacher_pb2_grpc.add_TeacherServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
)
MODEL_DEPLOYMENT = "TeacherModel"
INGRESS_DEPLOYMENT = "TeacherIngress"


def model_deployment_options(config: ServerConfig, fleet: FleetOptions) -> dict[str, Any]:
    """Serve options of the model deployment: replicas, resources, and the bounded queue."""
    threads = str(fleet.threads_per_replica)
    options: dict[str, Any] = {
        # One batch computing and the next one filling, per replica.
        "max_ongoing_requests": 2 * config.max_batch,
        # Frames waiting for a replica at each caller; beyond it RESOURCE_EXHAUSTED + retry-after.
        "max_queued_requests": config.max_queue,
        "graceful_shutdown_timeout_s": fleet.grace_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "ray_actor_options": {
            "num_cpus": fleet.threads_per_replica,
            "num_gpus": fleet.gpus_per_replica,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}},
        },
    }
    if fleet.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": fleet.min_replicas,
            "max_replicas": fleet.max_replicas,
            "initial_replicas": max(1, fleet.min_replicas or 0),
            "target_ongoing_requests": config.max_batch,
        }
    else:
        options["num_replicas"] = fleet.replicas
    return options


@dataclass
class FleetHandle:
    """A running fleet. `url` is what TeacherClient and sdk.connect take."""

    host: str
    port: int
    app_name: str
    metrics_port: Optional[int]
    _owns_ray: bool = field(repr=False)
    _owns_serve: bool = field(repr=False)
    _stats: Any = field(repr=False)
    _stopped: bool = field(default=False, repr=False)
    #: Port of the separate health-check server (ServerConfig.health_port), None when off.
    health_port: Optional[int] = None
    _health: Optional[FleetHealth] = field(default=None, repr=False)

    @property
    def target(self) -> str:
        """This machine's proxy: Serve's gRPC proxy listens on every interface, whatever `host` says."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return "grpc://" + self.target

    @property
    def metrics_url(self) -> Optional[str]:
        """Ray's metrics export port of this node (ours are there, prefixed ray_), if start_fleet chose it."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def replica_stats(self) -> dict[str, dict[str, float]]:
        """Frames, batches and busy seconds per model replica since start."""
        import ray

        return ray.get(self._stats.snapshot.remote(), timeout=30)

    @property
    def stats(self) -> BatcherStats:
        """All replicas together, in the native batcher's terms (busy_s: replica-seconds)."""
        rows = self.replica_stats().values()
        return BatcherStats(
            computed=int(sum(r["computed"] for r in rows)),
            batches=int(sum(r["batches"] for r in rows)),
            busy_s=sum(r["busy_s"] for r in rows),
        )

    def frames_resent(self) -> int:
        """Frames the ingress sent again because the replica computing them died."""
        import ray

        return int(ray.get(self._stats.frames_resent.remote(), timeout=30))

    def model_replicas(self) -> list[str]:
        """Names of the live model replica actors (ray.get_actor(name, namespace="serve"))."""
        import ray

        prefix = f"SERVE_REPLICA::{self.app_name}#{MODEL_DEPLOYMENT}#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))

    def stop(self, grace: Optional[float] = None) -> None:
        """Delete the application; stop Serve and Ray too if start_fleet started them."""
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        log.info("teacher fleet %s shutting down", self.app_name)
        if self._health is not None:
            self._health.stop()
        try:
            if self._owns_serve:
                serve.shutdown()
            else:
                serve.delete(self.app_name)
            ray.kill(self._stats)
        except Exception:  # noqa: BLE001 - the cluster may already be gone; Ray's own stop follows
            log.warning("could not delete the Serve application cleanly", exc_info=True)
        if self._owns_ray:
            ray.shutdown()
        log.info("teacher fleet %s stopped", self.app_name)

    def __enter__(self) -> "FleetHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port() -> int:
    """A port free on this machine now (Serve's proxy needs a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:
        return False


def _connect(config: ServerConfig, fleet: FleetOptions) -> tuple[bool, Optional[int]]:
    """Join or start Ray; returns (whether we started it, the metrics export port if we chose it)."""
    import ray

    if ray.is_initialized():
        return False, None
    if fleet.address:
        if config.metrics_port is not None:
            log.info("joining %s: metrics are on each node's own Ray metrics export port", fleet.address)
        ray.init(address=fleet.address)
        return False, None
    metrics_port = None if config.metrics_port is None else (config.metrics_port or free_port())
    _init_local(fleet.most_replicas * fleet.threads_per_replica, config.max_message_bytes, metrics_port,
                loopback=loopback_node(config))
    return True, metrics_port


def _init_local(cpus: int, max_message_bytes: int, metrics_port: Optional[int] = None, loopback: bool = True) -> None:
    """Start a Ray on this machine; `loopback`: its node address is 127.0.0.1, so its metrics agent
    (and its other ports) listen there only, not on every interface."""
    import ray
    from ray._private import ray_constants

    extra = {} if metrics_port is None else {"_metrics_export_port": metrics_port}
    # The proxy reads its message cap from its environment, which Ray's processes inherit
    # from this one when they start: set it for ray.init only. Ray picks a loopback node
    # address where it runs no cluster (its constant, read here and by its processes' env).
    env = {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(max_message_bytes)}
    if loopback:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    before = {key: os.environ.get(key) for key in env}
    cluster_before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = cluster_before and not loopback
    try:
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus), include_dashboard=False, **extra)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_before
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def local_ray(cpus: int = 1, max_message_bytes: int = ServerConfig.max_message_bytes) -> Iterator[None]:
    """One Ray on this machine for several start_fleet calls in a row (each deploys into it), stopped after."""
    import ray

    _init_local(cpus, max_message_bytes)
    try:
        yield
    finally:
        ray.shutdown()


def start_fleet(
    backend: str = "yolov5s-seg",
    config: Optional[ServerConfig] = None,
    fleet: Optional[FleetOptions] = None,
    *,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    **overrides: Any,
) -> FleetHandle:
    """Serve `backend` (a registry name; every replica loads its own) on Ray Serve.

    Keyword overrides replace fields of `config`, as for start_server, e.g.
    ``start_fleet("yolov5s-seg", fleet=FleetOptions(replicas=2), port=9000)``.
    Returns once every replica has loaded its model and the proxy serves.
    """
    try:
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions
    except ImportError as exc:
        raise RuntimeError(f"the Ray engine needs the fleet extra: pip install 'jitnet-edge[fleet]' ({exc})") from None

    # Serve's gRPC proxy listens on every interface: that is the Ray engine's default host.
    config = replace(config or ServerConfig(host="0.0.0.0"), **overrides)
    fleet = fleet or FleetOptions()
    check_settings(config, fleet)
    device = device or ("cuda" if fleet.gpus_per_replica > 0 else "cpu")
    reflection = config.reflection if config.reflection is not None else not config.tokens
    owns_ray, metrics_port = _connect(config, fleet)
    health = None
    try:
        owns_serve = not _serve_running()
        if not owns_serve:
            _check_running_serve(config, fleet, reflection)
        serve.start(
            http_options=HTTPOptions(host=config.host, port=fleet.http_port),
            grpc_options=gRPCOptions(port=config.port, grpc_servicer_functions=list(SERVICER_FUNCTIONS),
                                     request_timeout_s=fleet.request_timeout_s, enable_reflection=reflection),
        )
        app = _application(backend, config, fleet, weights=weights, device=device)
        start = time.monotonic()
        # A route is what registers the app with the proxies (gRPC included); HTTP calls to it find no method.
        serve.run(app[0], name=fleet.app_name, route_prefix=f"/{fleet.app_name}")
        if config.health_port is not None:
            health = FleetHealth(fleet.app_name, config.health_host, config.health_port).start()
    except BaseException:
        if health is not None:
            health.stop()
        if owns_ray:
            import ray

            ray.shutdown()
        raise
    handle = FleetHandle(config.host, config.port, fleet.app_name, metrics_port,
                         _owns_ray=owns_ray, _owns_serve=owns_serve, _stats=app[1],
                         health_port=health.port if health is not None else None, _health=health)
    scaling = (f"{fleet.min_replicas}..{fleet.max_replicas} replicas (autoscaling)" if fleet.autoscaling
               else f"{fleet.replicas} replica(s)")
    log.info(
        "teacher fleet %s (%s, %s x %d thread(s)%s) listening on %s%s; ready in %.1f s; batching max %d frames / %.1f ms, "
        "queue %d%s",
        fleet.app_name, backend, scaling, fleet.threads_per_replica,
        f", {fleet.gpus_per_replica:g} GPU each" if fleet.gpus_per_replica else "",
        handle.url, f", metrics on {handle.metrics_url}" if metrics_port is not None else "",
        time.monotonic() - start, config.max_batch, config.max_delay_ms, config.max_queue,
        ", tokens required" if config.tokens else "",
    )
    return handle


def _check_running_serve(config: ServerConfig, fleet: FleetOptions, reflection: bool) -> None:
    """Serve already runs in this cluster: its proxies keep their options, so refuse ours if they differ."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    grpc_options = ray.get(controller.get_grpc_config.remote(), timeout=60)
    http_options = ray.get(controller.get_http_config.remote(), timeout=60)
    check_running_serve(config, fleet, grpc_options, http_options, SERVICER_FUNCTIONS, reflection)


def _application(backend: str, config: ServerConfig, fleet: FleetOptions, *, weights: Optional[str], device: str) -> tuple[Any, Any]:
    """The bound Serve application (ingress -> model replicas) and its stats actor."""
    import ray
    from ray import serve

    # Detached: an application deployed from a config file outlives the task that built it.
    stats = ray.remote(num_cpus=0)(FleetStats).options(
        name=f"{fleet.app_name}-stats", namespace="serve", get_if_exists=True, lifetime="detached"
    ).remote()
    model_settings = ModelSettings(
        backend=backend, weights=weights, device=device, threads=fleet.threads_per_replica,
        max_batch=config.max_batch, max_delay_ms=config.max_delay_ms, score_threshold=config.score_threshold,
        warmup=config.warmup,
    )
    model_options = model_deployment_options(config, fleet)
    ingress_settings = IngressSettings(
        config=replace(config, tokens=dict(config.tokens) if config.tokens else None),
        # Two batches per replica (the one computing, the next one filling, as max_ongoing_requests
        # says): the rest waits in the ingress's policy queue, which (not Serve's FIFO) decides whose
        # frame goes next. Fewer slots split batches: frames freed one by one reach a replica one by one.
        slots=model_options["max_ongoing_requests"] * fleet.most_replicas,
        replicas=fleet.replicas if not fleet.autoscaling else max(1, fleet.min_replicas or 0),
        request_timeout_s=fleet.request_timeout_s,
    )
    model = serve.deployment(TeacherModel, name=MODEL_DEPLOYMENT).options(**model_options)
    ingress = serve.deployment(TeacherIngress, name=INGRESS_DEPLOYMENT).options(
        num_replicas=fleet.ingress_replicas,
        max_ongoing_requests=ingress_slots(config),
        ray_actor_options={"num_cpus": 0},
        graceful_shutdown_timeout_s=fleet.grace_s,
        graceful_shutdown_wait_loop_s=0.5,
    )
    return ingress.bind(model.bind(model_settings, stats), ingress_settings, stats), stats


def fleet_from_args(args: dict[str, Any]) -> tuple[str, ServerConfig, FleetOptions, dict[str, Any]]:
    """A Serve config file's `args` -> (backend, ServerConfig, FleetOptions, backend options).

    Keys are the fields of ServerConfig and FleetOptions, plus backend, weights,
    device and tokens_file (read with the CLI's --tokens rules); unknown keys are an error.
    host defaults to 0.0.0.0, where Serve's gRPC proxy listens.
    """
    from dataclasses import fields

    from teacher_server.server import tokens_from_file

    args = dict(args)
    backend = args.pop("backend", "yolov5s-seg")
    model = {k: args.pop(k) for k in ("weights", "device") if k in args}
    if "tokens_file" in args:
        args["tokens"] = tokens_from_file(args.pop("tokens_file"))
    args.setdefault("host", "0.0.0.0")
    server_keys = {f.name for f in fields(ServerConfig)}
    fleet_keys = {f.name for f in fields(FleetOptions)} - {"address"}
    unknown = set(args) - server_keys - fleet_keys
    if unknown:
        raise ValueError(f"unknown teacher fleet args {sorted(unknown)}; use fields of ServerConfig or FleetOptions")
    config = ServerConfig(**{k: v for k, v in args.items() if k in server_keys})
    fleet = FleetOptions(**{k: v for k, v in args.items() if k in fleet_keys})
    return backend, config, fleet, model


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder (`import_path: teacher_server.ray_engine:build_app` in a Serve
    config file or a KubeRay RayService): the application start_fleet deploys. The config file's
    grpc_options must list SERVICER_FUNCTIONS; see docs/fleet.md."""
    backend, config, fleet, model = fleet_from_args(args)
    check_settings(config, fleet, config_file=True)
    device = model.get("device") or ("cuda" if fleet.gpus_per_replica > 0 else "cpu")
    return _application(backend, config, fleet, weights=model.get("weights"), device=device)[0]
