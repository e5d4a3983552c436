"""`jitnet bench teacher`: throughput and latency of a real teacher server, batching on and off.

Each simulated camera is a thread with its own TeacherClient that sends real
DAVIS frames back to back (closed loop); the cameras run in a separate process
from the server, which listens on a free localhost port.
For every camera count the same backend is served twice, with max_batch=1
(batching off) and with dynamic batching, and the JSON holds one row each.

`--overload X` (goodput under X times capacity) and `--flood N` (one camera
ignoring its hints against honest ones) are bench/teacher_overload.py; the
cameras of every mode are bench/teacher_load.py; `--engine`/`--replicas`
compare the Ray fleet (bench/teacher_fleet.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from bench.machine import cpu_model
from bench.teacher_load import davis_root, load_frames, measure, summarize

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="yolov5s-seg", help="teacher backend name")
    parser.add_argument("--weights", default=None, help="weights file (maskrcnn)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--cameras", default="1,4,16", help="comma-separated camera counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration (per run / phase with --overload / --flood)")
    parser.add_argument("--rounds", type=int, default=3, help="alternate batching off/on this many times per camera count")
    parser.add_argument("--max-batch", type=int, default=8, help="max batch size when batching is on")
    parser.add_argument("--max-delay-ms", type=float, default=10.0, help="batching window when batching is on")
    parser.add_argument("--frames", type=int, default=12, help="distinct DAVIS frames to cycle through")
    parser.add_argument("--davis-root", default=None, help="DAVIS 2016 folder (default ../shared/data/davis2016 or $JITNET_DAVIS_ROOT)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the results here")
    # The fleet comparison (bench/teacher_fleet.py): engines and replicas instead of batching off/on.
    parser.add_argument("--engine", default="grpc", help="grpc (native), ray (the fleet, needs the fleet extra), or both: ray,grpc")
    parser.add_argument("--replicas", default="1", help="comma-separated Ray replica counts (the native server is one)")
    parser.add_argument("--threads-per-replica", type=int, default=None, help="torch threads per model, both engines (fleet comparison)")
    parser.add_argument("--probe", type=int, default=10, help="fleet comparison: sequential frames that measure per-request overhead")
    # Goodput under overload (see the module docstring).
    parser.add_argument("--overload", type=float, default=None,
                        help="offer this multiple of the measured capacity, open loop; compares deadline admission with the old rule")
    parser.add_argument("--deadline-s", type=float, default=1.0, help="--overload: each frame's deadline")
    parser.add_argument("--overload-cameras", type=int, default=32, help="--overload: cameras sharing the offered rate")
    parser.add_argument("--capacity-seconds", type=float, default=15.0, help="--overload: closed-loop seconds that measure capacity")
    parser.add_argument("--overload-runs", type=int, default=2,
                        help="--overload: open-loop runs of --seconds each, back to back on the same server")
    parser.add_argument("--compare-queue", action="store_true",
                        help="--overload: add one run against a server with the old rule (admit while the queue has room)")
    # One camera ignoring its hints (bench/teacher_overload.py).
    parser.add_argument("--flood", type=int, default=None,
                        help="calls one valid camera keeps in flight, resending each at once (hints ignored), against "
                             "--honest cameras; measured alone and flooded for --seconds each")
    parser.add_argument("--honest", type=int, default=3, help="--flood: honest cameras")
    parser.add_argument("--honest-fps", type=float, default=1.0, help="--flood: frames per second per honest camera")
    parser.add_argument("--flood-deadline-s", type=float, default=5.0, help="--flood: the honest frames' deadline")


def run(args: argparse.Namespace) -> int:
    if args.engine != "grpc" or args.replicas != "1" or args.threads_per_replica is not None:
        from bench.teacher_fleet import run as run_fleet

        return run_fleet(args)
    # libgomp's default busy-wait makes torch's OpenMP threads spin between ops;
    # on a shared CPU that costs several times the compute (see bench train).
    # Must be set before torch is imported; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from teacher_server.backends import load_backend
    from teacher_server.server import start_server

    camera_counts = [int(x) for x in str(args.cameras).split(",") if x.strip()]
    frames = load_frames(davis_root(args.davis_root), args.frames)
    backend = load_backend(args.backend, weights=args.weights, device=args.device)
    backend.warmup()
    if args.overload is not None or args.flood is not None:
        from bench.teacher_overload import run_flood, run_overload

        load_before = os.getloadavg()[0]
        measured = run_overload(args, backend, frames) if args.overload is not None else run_flood(args, backend, frames)
        report = {"backend": backend.name, "device": backend.device, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(), "max_batch": args.max_batch,
                  "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0], **measured}
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(report, indent=2))
            print(f"wrote {args.json_path}")
        return 0
    rows = []
    # Off and on alternate, in `rounds` slices, for each camera count, so changes in
    # machine load during the run affect both sides of each comparison alike.
    for cameras in camera_counts:
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for batching in (False, True):
                handle = start_server(
                    backend,
                    port=0,
                    max_batch=args.max_batch if batching else 1,
                    max_delay_ms=args.max_delay_ms if batching else 0.0,
                    max_queue=max(64, 4 * cameras),
                    max_queue_per_camera=4,
                    warmup=False,
                )
                try:
                    runs[batching].append(measure(handle.url, frames, cameras, args.seconds / args.rounds, handle))
                finally:
                    handle.stop(grace=30)
        for batching in (False, True):
            max_batch = args.max_batch if batching else 1
            row = {"cameras": cameras, "batching": batching, "max_batch": max_batch, **summarize(runs[batching])}
            rows.append(row)
            print(
                f"cameras={cameras:3d} batching={'on ' if batching else 'off'} fps={row['fps']:6.2f} "
                f"p50={row['p50_ms']:7.1f} ms p99={row['p99_ms']:7.1f} ms mean_batch={row['mean_batch']:5.2f} "
                f"cpu/frame={row['server_cpu_ms_per_frame']:6.0f} ms busy={row['server_busy']:.2f} errors={row['errors']} load={row['loadavg_1min']:.1f}",
                flush=True,
            )
    report = {
        "backend": backend.name,
        "model_version": backend.version,
        "device": backend.device,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "seconds_per_config": args.seconds,
        "rounds": args.rounds,
        "max_batch": args.max_batch,
        "max_delay_ms": args.max_delay_ms,
        "rows": rows,
    }
    by_key = {(r["cameras"], r["batching"]): r for r in rows}
    for cameras in camera_counts:
        on, off = by_key[(cameras, True)], by_key[(cameras, False)]
        speedup = on["fps"] / off["fps"] if off["fps"] else float("nan")
        print(f"cameras={cameras:3d}: batching speed-up {speedup:.2f}x, p99 {off['p99_ms']:.0f} -> {on['p99_ms']:.0f} ms")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_path}")
    return 0
