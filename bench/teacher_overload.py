"""`jitnet bench teacher --overload X` and `--flood N`: the teacher when more arrives than it can do.

`--overload X` measures goodput, the answers delivered within their deadline
per second. On ONE server it measures capacity (the best closed-loop rate of
two cameras and of many), then offers X
times that rate open loop (frames sent on schedule whether or not earlier ones
were answered, as cameras do) with `--deadline-s` deadlines, `--overload-runs`
times back to back, each reported on its own: what the server learnt under one
run must not spoil the next. `--compare-queue` adds one run against a server
with the old rule (admit while the queue has room).

`--flood N` measures what one camera that ignores every retry hint costs the
others: `--honest` cameras send one frame per `1/--honest-fps` s (sequentially,
retrying within `--flood-deadline-s` as the agent's client does) with their
own tokens, first alone, then while a camera with a valid token keeps N calls
in flight and resends each the moment it ends. Reported per phase: the honest
frames answered within the deadline, the server's CPU per answered frame (this
process is the server; the cameras run in processes of their own), and the
flood's call rate.
"""
from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
from typing import Any

from bench.teacher_load import goodput_row, measure, open_loop_process, percentile

_CTX = multiprocessing.get_context("spawn")


def _child(target: Any, *args: Any) -> tuple[Any, Any]:
    parent, child = _CTX.Pipe()
    proc = _CTX.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    if not parent.poll(300) or parent.recv() != "start":
        raise RuntimeError("a camera process did not start")
    return proc, parent


def _result(proc: Any, conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError("a camera process did not finish")
    result = conn.recv()
    proc.join(30)
    return result


# -- goodput under overload ---------------------------------------------------------------------------------
def _overload_run(handle: Any, frames: list, cameras: int, rate: float, seconds: float, deadline_s: float,
                  capacity: float) -> dict[str, Any]:
    keys = ("computed", "dropped_uncomputed", "refused_late", "probes", "busy_s")

    def stats() -> tuple:
        s = handle.stats
        return s.computed, s.expired + s.cancelled, s.refused_late, s.probes, s.busy_s

    before = stats()
    proc, conn = _child(open_loop_process, handle.url, frames, cameras, rate, seconds, deadline_s)
    records, elapsed = _result(proc, conn, seconds + 300)
    server = {k: a - b for k, a, b in zip(keys, stats(), before)}
    server["busy"] = server.pop("busy_s") / elapsed
    return {**goodput_row(records, elapsed, capacity, deadline_s), "server": server}


def run_overload(args: argparse.Namespace, backend: Any, frames: list) -> dict[str, Any]:
    """Capacity closed loop, then X times it open loop, `--overload-runs` times on the same server."""
    from teacher_server.server import start_server

    cameras = args.overload_cameras
    limits = dict(port=0, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, warmup=False,
                  max_queue=max(64, 4 * cameras))
    rows = []
    handle = start_server(backend, **limits)
    try:
        # Capacity: the best closed-loop rate of two cameras (the model always busy, small batches) or many (full
        # batches); on a CPU under other load, large batches can be slower per frame than small ones.
        closed = {}
        for count in sorted({2, min(cameras, 16)}):
            run = measure(handle.url, frames, count, args.capacity_seconds, handle)
            closed[count] = sum(len(lat) for lat in run["latencies"]) / run["elapsed"]
        capacity = max(closed.values())
        rate = args.overload * capacity
        measured = ", ".join(f"{fps:.2f}/s with {count} camera{'s' if count > 1 else ''}" for count, fps in closed.items())
        print(f"capacity {capacity:.2f} frames/s (closed loop: {measured}); offering {rate:.2f}/s over {cameras} cameras "
              f"with {args.deadline_s:g} s deadlines, {args.overload_runs} runs on this server", flush=True)
        for run in range(1, args.overload_runs + 1):
            rows.append({"admission": "deadline", "run": run,
                         **_overload_run(handle, frames, cameras, rate, args.seconds, args.deadline_s, capacity)})
            _print_goodput(rows[-1])
    finally:
        handle.stop(grace=30)
    if args.compare_queue:
        handle = start_server(backend, **limits, deadline_admission=False)
        try:
            rows.append({"admission": "queue", "run": 1,
                         **_overload_run(handle, frames, cameras, rate, args.seconds, args.deadline_s, capacity)})
            _print_goodput(rows[-1])
        finally:
            handle.stop(grace=30)
    return {"capacity_fps": capacity, "capacity_closed_loop_fps": {str(k): v for k, v in closed.items()},
            "overload": args.overload, "offered_fps": rate, "deadline_s": args.deadline_s, "cameras": cameras, "rows": rows}


def _print_goodput(row: dict[str, Any]) -> None:
    print(
        f"admission={row['admission']:8s} run={row['run']} offered={row['offered_fps']:5.2f}/s "
        f"goodput={row['goodput_fps']:5.2f}/s ({row['goodput_of_capacity']:.0%} of capacity) "
        f"in-time={row['answered_in_time']} refused={row['refused']} expired={row['expired']} other={row['other']} "
        f"p50={row['p50_ms']:.0f} ms p99={row['p99_ms']:.0f} ms refusal p50={row['refusal_p50_ms']:.0f} ms; "
        f"server computed={row['server']['computed']:.0f} dropped uncomputed={row['server']['dropped_uncomputed']:.0f} "
        f"probes={row['server']['probes']:.0f} busy={row['server']['busy']:.0%}",
        flush=True,
    )


# -- a camera that ignores its hints --------------------------------------------------------------------------------
def honest_process(url: str, frames: list, tokens: dict[str, str], fps: float, seconds: float, deadline_s: float,
                   conn: Any) -> None:
    """Runs in its own process: each camera sends a frame every 1/fps s (skipping ticks it is too late for);
    records (camera, answered within the deadline of its tick, latency s)."""
    from edge_agent.teacher_client import TeacherClient, TeacherError
    from protos import teacher_pb2

    clients = {c: TeacherClient(url, camera_id=c, token=t, timeout_s=deadline_s * 2, max_attempts=50)
               for c, t in tokens.items()}
    for c, client in clients.items():  # connect before the clock starts
        client.info()
    records: list[tuple[str, bool, float]] = []
    lock = threading.Lock()
    conn.send("start")
    t0 = time.monotonic() + 0.5

    def camera(c: str, offset: float) -> None:
        ticks = int(seconds * fps)
        for k in range(ticks):
            tick = t0 + offset + k / fps
            time.sleep(max(0.0, tick - time.monotonic()))
            left = tick + deadline_s - time.monotonic()
            ok = False
            if left > 0.05:
                data, group = frames[k % len(frames)]
                try:
                    clients[c].send(teacher_pb2.LabelRequest(camera_id=c, frame_index=k, encoded=data, groups=[group]),
                                    deadline_s=left)
                    ok = time.monotonic() - tick <= deadline_s
                except TeacherError:
                    pass
            with lock:
                records.append((c, ok, time.monotonic() - tick))

    threads = [threading.Thread(target=camera, args=(c, i / (fps * len(clients)))) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn.send((records, time.monotonic() - t0))
    for client in clients.values():
        client.close()


def flood_process(url: str, frame: tuple, camera: str, token: str, concurrency: int, deadline_s: float, conn: Any) -> None:
    """Runs in its own process: `concurrency` calls in flight on one valid token, each resent the moment it
    ends, whatever the answer (hints ignored), until told to stop; reports calls by outcome."""
    import grpc

    from edge_agent.teacher_client import _parse_url
    from protos import teacher_pb2, teacher_pb2_grpc

    target, _ = _parse_url(url)
    channels = [grpc.insecure_channel(target) for _ in range(max(1, concurrency // 16))]
    stubs = [teacher_pb2_grpc.TeacherStub(ch) for ch in channels]
    metadata = (("authorization", f"Bearer {token}"),)
    for stub in stubs:
        stub.GetInfo(teacher_pb2.InfoRequest(), timeout=60, metadata=metadata)
    data, group = frame
    request = teacher_pb2.LabelRequest(camera_id=camera, frame_index=0, encoded=data, groups=[group])
    stop = threading.Event()
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def flood(stub: Any) -> None:
        while not stop.is_set():
            try:
                stub.Label(request, timeout=deadline_s, metadata=metadata)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                outcomes[code] = outcomes.get(code, 0) + 1

    threads = [threading.Thread(target=flood, args=(stubs[k % len(stubs)],), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    conn.send("start")
    conn.recv()  # stop
    with lock:
        counted = dict(outcomes)  # the calls made while measured
    stop.set()
    for t in threads:
        t.join(deadline_s + 5)
    conn.send(counted)
    for ch in channels:
        ch.close()


def run_flood(args: argparse.Namespace, backend: Any, frames: list) -> dict[str, Any]:
    """The honest cameras alone, then under the flood, on one server; one row per phase."""
    from teacher_server.server import start_server

    honest = {f"cam{c}": f"honest-camera-token-{c:04d}" for c in range(args.honest)}
    tokens = {**honest, "flood": "flooding-camera-token"}
    handle = start_server(backend, port=0, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, warmup=False,
                          tokens=tokens)
    rows = []
    try:
        for phase in ("alone", "flooded"):
            flood = None
            if phase == "flooded":
                flood = _child(flood_process, handle.url, frames[0], "flood", tokens["flood"], args.flood,
                               args.flood_deadline_s)
            computed, refused = handle.stats.computed, handle._servicer.limiter.refusals()
            cpu = time.process_time()
            proc, conn = _child(honest_process, handle.url, frames, honest, args.honest_fps, args.seconds,
                                args.flood_deadline_s)
            records, elapsed = _result(proc, conn, args.seconds + 300)
            cpu = time.process_time() - cpu
            computed = handle.stats.computed - computed
            flood_calls: dict[str, int] = {}
            if flood is not None:
                fproc, fconn = flood
                fconn.send("stop")
                flood_calls = _result(fproc, fconn, 120)
            now_refused = handle._servicer.limiter.refusals()
            answered = sum(ok for _, ok, _ in records)
            flood_ok = flood_calls.get("OK", 0)
            rows.append({
                "phase": phase, "seconds": elapsed, "honest_cameras": args.honest, "honest_fps": args.honest_fps,
                "honest_frames": len(records), "honest_answered_in_time": answered,
                "honest_answered_share": answered / len(records) if records else float("nan"),
                "honest_p50_ms": percentile([s for _, ok, s in records if ok], 50) * 1e3,
                "honest_p99_ms": percentile([s for _, ok, s in records if ok], 99) * 1e3,
                "server_cpu_s": cpu, "computed": computed,
                "server_cpu_ms_per_answered_frame": cpu / max(1, answered + flood_ok) * 1e3,
                "flood_concurrency": args.flood if flood is not None else 0,
                "flood_calls": sum(flood_calls.values()), "flood_calls_per_s": sum(flood_calls.values()) / elapsed,
                "flood_outcomes": flood_calls,
                "refused_by_kind": {k: v - refused.get(k, 0) for k, v in now_refused.items() if v - refused.get(k, 0)},
            })
            row = rows[-1]
            print(f"{phase:8s} honest answered {answered}/{len(records)} ({row['honest_answered_share']:.0%}) within "
                  f"{args.flood_deadline_s:g} s, p50 {row['honest_p50_ms']:.0f} ms p99 {row['honest_p99_ms']:.0f} ms; "
                  f"server CPU {cpu:.1f} s = {row['server_cpu_ms_per_answered_frame']:.0f} ms per answered frame "
                  f"({computed} computed); flood {row['flood_calls_per_s']:.1f} calls/s {flood_calls}; "
                  f"refused {row['refused_by_kind']}", flush=True)
    finally:
        handle.stop(grace=30)
    alone, flooded = rows
    ratio = flooded["server_cpu_ms_per_answered_frame"] / alone["server_cpu_ms_per_answered_frame"]
    print(f"CPU per answered frame flooded / alone: {ratio:.2f}x", flush=True)
    return {"flood": args.flood, "honest": args.honest, "honest_fps": args.honest_fps,
            "deadline_s": args.flood_deadline_s, "rows": rows, "cpu_per_answered_ratio": ratio}
