"""The cameras of `jitnet bench teacher`: real DAVIS frames sent by clients in processes of their own.

Closed loop (each camera sends its next frame when the last was answered:
what a server can do) and open loop (frames sent on schedule whether or not
earlier ones were answered, as cameras do: what a server does under a given
load), and the summaries both report. Shared by bench/teacher.py (batching
on/off), bench/teacher_overload.py (goodput, floods) and bench/teacher_fleet.py
(the Ray fleet against the native server).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

_SEQUENCES = (("dog", "dog"), ("car-shadow", "auto"), ("breakdance", "person"))


def davis_root(arg: Optional[str]) -> Path:
    """--davis-root, else $JITNET_DAVIS_ROOT, else the workspace's ../shared/data/davis2016."""
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


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


#: A closed-loop camera waits for its answer however long the queue (what the server can do, not what it
#: admits): without a deadline the client's adaptive one lets deadline admission refuse frames of a full
#: queue, and the server idles while the cameras wait out their hints.
CLOSED_LOOP_DEADLINE_S = 120.0


def closed_loop_process(url: str, frames: list[tuple[bytes, str]], cameras: int, seconds: float, conn: Any) -> None:
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
            try:
                clients[c].send(requests[c][k % len(frames)], deadline_s=CLOSED_LOOP_DEADLINE_S)
            except TeacherError:
                pass

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
                labels = clients[c].send(req, deadline_s=CLOSED_LOOP_DEADLINE_S)
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
    proc = ctx.Process(target=closed_loop_process, args=(url, frames, cameras, seconds, child), daemon=True)
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
        "p50_ms": percentile(flat, 50) * 1e3,
        "p99_ms": percentile(flat, 99) * 1e3,
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


def open_loop_process(url: str, frames: list[tuple[bytes, str]], cameras: int, rate: float, seconds: float,
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


def goodput_row(records: list[tuple[str, float]], elapsed: float, capacity: float, deadline_s: float) -> dict[str, Any]:
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
        "p50_ms": percentile(ok, 50) * 1e3,
        "p99_ms": percentile(ok, 99) * 1e3,
        "refusal_p50_ms": percentile(refused, 50) * 1e3,
        "seconds": elapsed,
    }
