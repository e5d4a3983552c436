"""`jitnet bench teacher`: throughput and latency of a real teacher server, batching on and off.

Each simulated camera is a thread with its own TeacherClient that sends real
DAVIS frames back to back (closed loop); the cameras run in a separate process
from the server, which listens on a free localhost port.
For every camera count the same backend is served twice, with max_batch=1
(batching off) and with dynamic batching, and the JSON holds one row each.

`--overload X` measures something else: goodput, the answers delivered
within their deadline per second. It measures capacity (closed loop, as
above), then offers X times that rate open loop (frames are sent on schedule
whether or not earlier ones were answered, as cameras do) with `--deadline-s`
deadlines, to the server with deadline admission and with the old rule
(admit while the queue has room), alternating, and reports for each:
answered in time, refused (RESOURCE_EXHAUSTED), expired (DEADLINE_EXCEEDED),
goodput / capacity and latency percentiles.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

from bench.machine import cpu_model

log = logging.getLogger(__name__)

_SEQUENCES = (("dog", "dog"), ("car-shadow", "auto"), ("breakdance", "person"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="yolov5s-seg", help="teacher backend name")
    parser.add_argument("--weights", default=None, help="weights file (maskrcnn)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--cameras", default="1,4,16", help="comma-separated camera counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration")
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


def _davis_root(arg: Optional[str]) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("JITNET_DAVIS_ROOT"):
        return Path(os.environ["JITNET_DAVIS_ROOT"])
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016"


def load_frames(root: Path, count: int) -> list[tuple[bytes, str]]:
    """(JPEG bytes as stored, group) for `count` real frames spread over three sequences."""
    frames = []
    for k in range(count):
        seq, group = _SEQUENCES[k % len(_SEQUENCES)]
        files = sorted((root / "JPEGImages" / seq).glob("*.jpg"))
        if not files:
            raise SystemExit(f"no DAVIS frames under {root / 'JPEGImages' / seq}; pass --davis-root")
        frames.append((files[(k // len(_SEQUENCES)) * 7 % len(files)].read_bytes(), group))
    return frames


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _cameras_process(url: str, frames: list[tuple[bytes, str]], cameras: int, seconds: float, conn: Any) -> None:
    """Runs in its own process (real cameras are not threads of the server): closed-loop load."""
    from edge_agent.teacher_client import TeacherClient, TeacherError
    from protos import teacher_pb2

    clients = [TeacherClient(url, camera_id=f"cam{c}", timeout_s=120.0, max_attempts=8) for c in range(cameras)]
    requests = [
        [teacher_pb2.LabelRequest(camera_id=f"cam{c}", frame_index=i, encoded=data, groups=[group]) for i, (data, group) in enumerate(frames)]
        for c in range(cameras)
    ]

    def warm(c: int) -> None:  # connections, and the model at the batch sizes this load makes
        for k in range(2):
            clients[c].send(requests[c][k % len(frames)])

    warmers = [threading.Thread(target=warm, args=(c,)) for c in range(cameras)]
    for t in warmers:
        t.start()
    for t in warmers:
        t.join()
    latencies: list[list[float]] = [[] for _ in range(cameras)]
    errors = [0] * cameras
    start_barrier = threading.Barrier(cameras + 1)
    stop_at = [0.0]

    def camera(c: int) -> None:
        start_barrier.wait()
        i = c  # cameras start on different frames
        while time.monotonic() < stop_at[0]:
            req = requests[c][i % len(frames)]
            i += 1
            try:
                labels = clients[c].send(req)
            except TeacherError:
                errors[c] += 1
                continue
            latencies[c].append(labels.latency_s)

    threads = [threading.Thread(target=camera, args=(c,), daemon=True) for c in range(cameras)]
    for t in threads:
        t.start()
    conn.send("start")
    t0 = time.monotonic()
    stop_at[0] = t0 + seconds
    start_barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    conn.send((latencies, errors, elapsed))
    for client in clients:
        client.close()


def measure(url: str, frames: list[tuple[bytes, str]], cameras: int, seconds: float, handle: Any) -> dict[str, Any]:
    """Closed-loop load from `cameras` clients in another process; frames/s, latency, mean batch."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_cameras_process, args=(url, frames, cameras, seconds, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(300) or parent.recv() != "start":
            raise RuntimeError("the camera process did not start")
        before = (handle.stats.computed, handle.stats.batches, handle.stats.busy_s)
        cpu_before = time.process_time()  # this process is the server; the cameras are the child
        if not parent.poll(seconds + 300):
            raise RuntimeError("the camera process did not finish")
        latencies, errors, elapsed = parent.recv()
        computed = handle.stats.computed - before[0]
        batches = handle.stats.batches - before[1]
        server_cpu = time.process_time() - cpu_before
        busy = handle.stats.busy_s - before[2]
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return {
        "latencies": latencies,
        "errors": errors,
        "elapsed": elapsed,
        "computed": computed,
        "batches": batches,
        "server_cpu": server_cpu,
        "busy": busy,
        "loadavg_1min": os.getloadavg()[0],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from one or more rounds of the same configuration (latencies pooled)."""
    cameras = len(runs[0]["latencies"])
    elapsed = sum(r["elapsed"] for r in runs)
    per_camera = [sum(len(r["latencies"][c]) for r in runs) for c in range(cameras)]
    flat = [x for r in runs for lat in r["latencies"] for x in lat]
    computed = sum(r["computed"] for r in runs)
    batches = sum(r["batches"] for r in runs)
    return {
        "fps": len(flat) / elapsed,
        "p50_ms": _percentile(flat, 50) * 1e3,
        "p99_ms": _percentile(flat, 99) * 1e3,
        "mean_batch": computed / batches if batches else 0.0,
        "frames": len(flat),
        "errors": sum(sum(r["errors"]) for r in runs),
        "seconds": elapsed,
        "rounds": len(runs),
        "camera_fps_min": min(per_camera) / elapsed,
        "camera_fps_max": max(per_camera) / elapsed,
        # CPU time the server spent per computed frame: less sensitive than fps to other load.
        "server_cpu_ms_per_frame": sum(r["server_cpu"] for r in runs) / computed * 1e3 if computed else float("nan"),
        # Share of the wall time the model was computing; low = the server waited for cameras.
        "server_busy": sum(r["busy"] for r in runs) / elapsed,
        "loadavg_1min": max(r["loadavg_1min"] for r in runs),
    }


def _open_loop_process(url: str, frames: list[tuple[bytes, str]], cameras: int, rate: float, seconds: float,
                       deadline_s: float, conn: Any) -> None:
    """Runs in its own process: frames sent on a fixed schedule (`rate` per second over all cameras),
    each with `deadline_s`, without waiting for answers; one record per frame."""
    import grpc

    from edge_agent.teacher_client import _parse_url
    from protos import teacher_pb2, teacher_pb2_grpc

    target, _ = _parse_url(url)
    channels = [grpc.insecure_channel(target) for _ in range(cameras)]
    stubs = [teacher_pb2_grpc.TeacherStub(ch) for ch in channels]
    for c, stub in enumerate(stubs):  # connect every camera before the clock starts
        stub.GetInfo(teacher_pb2.InfoRequest(), timeout=60)
    records: list[tuple[str, float]] = []
    lock = threading.Lock()
    outstanding = threading.Semaphore(0)
    conn.send("start")
    t0 = time.monotonic()
    sent = 0
    while True:
        due = t0 + sent / rate
        if due - t0 >= seconds:
            break
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        c = sent % cameras
        data, group = frames[sent % len(frames)]
        request = teacher_pb2.LabelRequest(camera_id=f"cam{c}", frame_index=sent, encoded=data, groups=[group])
        start = time.monotonic()
        future = stubs[c].Label.future(request, timeout=deadline_s)

        def done(call: Any, start: float = start) -> None:
            code = call.code()
            with lock:
                records.append((code.name if code != grpc.StatusCode.OK else "OK", time.monotonic() - start))
            outstanding.release()

        future.add_done_callback(done)
        sent += 1
    elapsed = time.monotonic() - t0
    for _ in range(sent):
        outstanding.acquire(timeout=deadline_s + 30)
    conn.send((records, elapsed))
    for ch in channels:
        ch.close()


def _goodput_row(records: list[tuple[str, float]], elapsed: float, capacity: float, deadline_s: float) -> dict[str, Any]:
    ok = [s for code, s in records if code == "OK" and s <= deadline_s]
    refused = [s for code, s in records if code == "RESOURCE_EXHAUSTED"]
    expired = sum(1 for code, _ in records if code == "DEADLINE_EXCEEDED")
    return {
        "offered": len(records),
        "offered_fps": len(records) / elapsed,
        "answered_in_time": len(ok),
        "refused": len(refused),
        "expired": expired,
        "other": len(records) - len(ok) - len(refused) - expired,
        "goodput_fps": len(ok) / elapsed,
        "goodput_of_capacity": len(ok) / elapsed / capacity if capacity else float("nan"),
        "p50_ms": _percentile(ok, 50) * 1e3,
        "p99_ms": _percentile(ok, 99) * 1e3,
        "refusal_p50_ms": _percentile(refused, 50) * 1e3,
        "seconds": elapsed,
    }


def run_overload(args: argparse.Namespace, backend: Any, frames: list[tuple[bytes, str]]) -> dict[str, Any]:
    """Capacity closed loop, then X times it open loop: deadline admission vs the old rule, alternating."""
    import multiprocessing

    from teacher_server.server import start_server

    limits = dict(port=0, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, warmup=False)
    cameras = args.overload_cameras
    handle = start_server(backend, **limits, max_queue=max(64, 4 * cameras))
    try:
        closed = measure(handle.url, frames, min(cameras, 16), args.capacity_seconds, handle)
    finally:
        handle.stop(grace=30)
    capacity = sum(len(lat) for lat in closed["latencies"]) / closed["elapsed"]
    rate = args.overload * capacity
    print(f"capacity {capacity:.2f} frames/s (closed loop, {min(cameras, 16)} cameras); offering {rate:.2f}/s "
          f"over {cameras} cameras with {args.deadline_s:g} s deadlines", flush=True)
    ctx = multiprocessing.get_context("spawn")
    runs: dict[str, list[tuple[list, float]]] = {"deadline": [], "queue": []}
    server: dict[str, dict[str, float]] = {a: {"computed": 0, "dropped_uncomputed": 0, "refused_late": 0, "busy_s": 0.0}
                                           for a in runs}
    for _ in range(args.rounds):
        for admission in ("queue", "deadline"):
            handle = start_server(backend, **limits, max_queue=max(64, 4 * cameras), deadline_admission=admission == "deadline")
            stats_before = (handle.stats.computed, handle.stats.expired + handle.stats.cancelled,
                            handle.stats.refused_late, handle.stats.busy_s)
            try:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_open_loop_process, daemon=True,
                                   args=(handle.url, frames, cameras, rate, args.seconds / args.rounds, args.deadline_s, child))
                proc.start()
                if not parent.poll(300) or parent.recv() != "start":
                    raise RuntimeError("the camera process did not start")
                if not parent.poll(args.seconds + 300):
                    raise RuntimeError("the camera process did not finish")
                runs[admission].append(parent.recv())
                proc.join(30)
                after = (handle.stats.computed, handle.stats.expired + handle.stats.cancelled,
                         handle.stats.refused_late, handle.stats.busy_s)
                for key, a, b in zip(("computed", "dropped_uncomputed", "refused_late", "busy_s"), after, stats_before):
                    server[admission][key] += a - b
            finally:
                handle.stop(grace=30)
    rows = []
    for admission in ("queue", "deadline"):
        records = [r for recs, _ in runs[admission] for r in recs]
        elapsed = sum(e for _, e in runs[admission])
        row = {"admission": admission, **_goodput_row(records, elapsed, capacity, args.deadline_s),
               "server": {**server[admission], "busy": server[admission]["busy_s"] / elapsed}}
        rows.append(row)
        print(
            f"admission={admission:8s} offered={row['offered_fps']:5.2f}/s goodput={row['goodput_fps']:5.2f}/s "
            f"({row['goodput_of_capacity']:.0%} of capacity) in-time={row['answered_in_time']} refused={row['refused']} "
            f"expired={row['expired']} other={row['other']} p50={row['p50_ms']:.0f} ms p99={row['p99_ms']:.0f} ms "
            f"refusal p50={row['refusal_p50_ms']:.0f} ms; server computed={row['server']['computed']:.0f} "
            f"dropped uncomputed={row['server']['dropped_uncomputed']:.0f} busy={row['server']['busy']:.0%}",
            flush=True,
        )
    return {"capacity_fps": capacity, "overload": args.overload, "offered_fps": rate, "deadline_s": args.deadline_s,
            "cameras": cameras, "rows": rows}


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
    frames = load_frames(_davis_root(args.davis_root), args.frames)
    backend = load_backend(args.backend, weights=args.weights, device=args.device)
    backend.warmup()
    if args.overload is not None:
        report = {"backend": backend.name, "device": backend.device, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(), "max_batch": args.max_batch,
                  "loadavg_1min": os.getloadavg()[0], **run_overload(args, backend, frames)}
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
