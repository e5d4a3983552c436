"""`jitnet bench teacher --engine ray,grpc --replicas 1,2`: the Ray fleet against the native server.

The same closed-loop cameras as `bench teacher` (a separate process, real DAVIS
frames) against each engine and replica count, batching on, at the same torch
threads per model. One row per (engine, replicas, cameras). Before the load,
one camera sends `--probe` frames one at a time: its latency minus the model's
own time (inference + postprocess, from the answer's timings) is the engine's
per-request overhead, so the Ray row shows what the proxy, the ingress and the
hops between the processes cost on top of the native server.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.machine import cpu_model
from bench.teacher_load import davis_root, load_frames, measure, summarize


def _configs(engines: list[str], replicas: list[int]) -> list[tuple[str, int]]:
    unknown = set(engines) - {"grpc", "ray"}
    if unknown:
        raise SystemExit(f"unknown engine(s) {sorted(unknown)}; use grpc and/or ray")
    # The native server is one process: one replica.
    return [(e, r) for e in engines for r in (replicas if e == "ray" else [1])]


def probe_overhead_ms(url: str, frames: list[tuple[bytes, str]], count: int) -> dict[str, float]:
    """Median latency, model time and their difference over `count` sequential frames of one camera."""
    from edge_agent.teacher_client import TeacherClient
    from protos import teacher_pb2

    latency, model = [], []
    with TeacherClient(url, camera_id="probe", timeout_s=120, max_attempts=8) as client:
        for i in range(count + 2):  # two to warm the connection
            data, group = frames[i % len(frames)]
            labels = client.send(teacher_pb2.LabelRequest(camera_id="probe", frame_index=i, encoded=data, groups=[group]))
            if i >= 2:
                latency.append(labels.latency_s * 1e3)
                model.append(labels.timings["inference_ms"] + labels.timings["postprocess_ms"])
    return {
        "probe_latency_ms": statistics.median(latency),
        "probe_model_ms": statistics.median(model),
        "overhead_ms": statistics.median(a - b for a, b in zip(latency, model)),
    }


def _start(engine: str, replicas: int, args: argparse.Namespace, cameras: int) -> Any:
    limits = dict(port=0, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_queue=max(64, 4 * cameras),
                  max_queue_per_camera=4, warmup=True)
    if engine == "grpc":
        from teacher_server.server import start_server

        return start_server(args.backend_object, **limits)
    from teacher_server.ray_engine import FleetOptions, start_fleet

    options = FleetOptions(replicas=replicas, threads_per_replica=args.threads_per_replica, http_port=args.fleet_http_port)
    return start_fleet(args.backend, fleet=options, weights=args.weights, device=args.device,
                       **dict(limits, port=args.fleet_port))


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from teacher_server.backends import load_backend
    from teacher_server.ray_engine import free_port, local_ray

    engines = [e.strip() for e in str(args.engine).split(",") if e.strip()]
    replica_counts = [int(x) for x in str(args.replicas).split(",") if x.strip()]
    camera_counts = [int(x) for x in str(args.cameras).split(",") if x.strip()]
    threads = args.threads_per_replica = args.threads_per_replica or 1
    torch.set_num_threads(threads)  # the native server's model: the same threads as one replica
    frames = load_frames(davis_root(args.davis_root), args.frames)
    args.backend_object = load_backend(args.backend, weights=args.weights, device=args.device)
    args.fleet_port, args.fleet_http_port = free_port(), free_port()
    configs = _configs(engines, replica_counts)
    rows = []
    # One Ray for every fleet configuration (each deploys its application into it).
    with local_ray(max(replica_counts) * threads) if "ray" in engines else contextlib.nullcontext():
        for cameras in camera_counts:
            for engine, replicas in configs:
                handle = _start(engine, replicas, args, cameras)
                try:
                    probe = probe_overhead_ms(handle.url, frames, args.probe) if args.probe else {}
                    runs = [measure(handle.url, frames, cameras, args.seconds / args.rounds, handle) for _ in range(args.rounds)]
                finally:
                    handle.stop(30)
                row = {"engine": engine, "replicas": replicas, "threads_per_replica": threads, "cameras": cameras,
                       "batching": True, "max_batch": args.max_batch, **summarize(runs), **probe}
                if engine == "ray":  # the replicas are other processes: this one's CPU says nothing
                    row["server_cpu_ms_per_frame"] = None
                rows.append(row)
                print(
                    f"engine={engine:4s} replicas={replicas} cameras={cameras:3d} fps={row['fps']:6.2f} "
                    f"p50={row['p50_ms']:7.1f} ms p99={row['p99_ms']:7.1f} ms mean_batch={row['mean_batch']:5.2f} "
                    f"overhead={row.get('overhead_ms', float('nan')):5.1f} ms errors={row['errors']} load={row['loadavg_1min']:.1f}",
                    flush=True,
                )
    by_key = {(r["engine"], r["replicas"], r["cameras"]): r for r in rows}
    comparisons = []
    for cameras in camera_counts:
        ray1, native = by_key.get(("ray", 1, cameras)), by_key.get(("grpc", 1, cameras))
        for replicas in replica_counts:
            more = by_key.get(("ray", replicas, cameras))
            if ray1 and more and replicas > 1:
                comparisons.append({"cameras": cameras, "what": f"ray {replicas} replicas / 1", "ratio": more["fps"] / ray1["fps"]})
        if ray1 and native:
            comparisons.append({"cameras": cameras, "what": "ray 1 replica / native", "ratio": ray1["fps"] / native["fps"]})
            if "overhead_ms" in ray1 and "overhead_ms" in native:
                comparisons.append({"cameras": cameras, "what": "ray per-request overhead over native, ms",
                                    "ms": ray1["overhead_ms"] - native["overhead_ms"]})
    for c in comparisons:
        value = f"{c['ratio']:.2f}x" if "ratio" in c else f"{c['ms']:+.1f} ms"
        print(f"cameras={c['cameras']:3d}: {c['what']}: {value}")
    report = {
        "backend": args.backend_object.name, "model_version": args.backend_object.version, "device": args.device,
        "threads_per_replica": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(), "seconds_per_config": args.seconds, "rounds": args.rounds, "max_batch": args.max_batch,
        "max_delay_ms": args.max_delay_ms, "rows": rows, "comparisons": comparisons, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_path}")
    return 0
