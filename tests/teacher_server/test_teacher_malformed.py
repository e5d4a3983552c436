"""10,000 malformed requests against `jitnet teacher` in its own process: it stays up, logs no traceback,
and its memory stops growing (issue 18's check; slow)."""
from __future__ import annotations

import random
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from edge_agent.teacher_client import TeacherClient
from protos import teacher_pb2
from teacher_helpers import REPO_ROOT, StderrWatch, davis_rgb

pytestmark = pytest.mark.slow

TOTAL, WARM_UP = 10_000, 2_000


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _malformed(jpeg: bytes, png: bytes) -> list[tuple[str, bytes]]:
    """(method, serialized request) of every kind; the servicer must refuse each cheaply and cleanly."""
    R, raw = teacher_pb2.LabelRequest, teacher_pb2.RawImage

    def label(**fields) -> tuple[str, bytes]:
        fields.setdefault("camera_id", "bad")
        fields.setdefault("groups", ["dog"])
        return "Label", R(**fields).SerializeToString()

    sof = jpeg.find(b"\xff\xc0")
    bomb = bytearray(jpeg)
    bomb[sof + 5 : sof + 9] = struct.pack(">HH", 6000, 6000)
    bad_length = bytearray(jpeg)
    bad_length[4:6] = b"\x00\x01"
    broken_png = png[:100] + bytes(8) + png[108:]
    kinds = [
        ("Label", b"\xff\xff\xff\xff not a protobuf"),
        ("LabelStream", b"\x0a\xff\xff\xff\xff\x0f"),
        ("GetInfo", b"\xff\x00\xff"),
        ("Label", b"\x0a\x03\xff\xfe\xfd"),  # camera_id that is not UTF-8
        label(encoded=b"GIF89a not an image"),
        label(encoded=b"\xff\xd8\xff\xe0" + bytes(100)),
        label(encoded=jpeg[: len(jpeg) // 2]),
        label(encoded=jpeg[:-2]),
        label(encoded=bytes(bomb)),
        label(encoded=bytes(bad_length)),
        label(encoded=b"\xff\xd8\xff" + bytes(random.Random(1).randbytes(300))),
        label(encoded=broken_png),
        label(encoded=png[:20]),
        label(raw=raw(data=bytes(1000), height=20, width=20, channels=3)),
        label(raw=raw(data=bytes(400), height=20, width=20, channels=1)),
        label(raw=raw(data=b"", height=0, width=20, channels=3)),
        label(raw=raw(data=bytes(12), height=100000, width=100000, channels=3)),
        label(),
        label(encoded=jpeg, groups=["unicorn"]),
        label(encoded=jpeg, groups=[f"x{k}" for k in range(500)]),
        label(encoded=jpeg, groups=["g" * 5000]),
        label(encoded=jpeg, groups=[]),
        label(encoded=jpeg, groups=["dog", "dog"]),
        label(encoded=jpeg, score_threshold=1.5),
        label(encoded=jpeg, score_threshold=float("nan")),
        label(encoded=jpeg, camera_id="c" * 1000),
    ]
    return kinds


def test_ten_thousand_malformed_requests_leave_the_server_up_without_tracebacks_or_growing_memory() -> None:
    frame = np.ascontiguousarray(davis_rgb("dog", 10)[::2, ::2])
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
    png = cv2.imencode(".png", cv2.cvtColor(frame[::4, ::4], cv2.COLOR_RGB2BGR))[1].tobytes()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "teacher", "--backend", "yolov5s-seg", "--host", "127.0.0.1",
                             "--port", "0", "--metrics-port", "-1"], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    log = StderrWatch(proc, r"listening on (grpc://[^\s;,]+)")
    try:
        url = log.wait(180).group(1)
        target = url.removeprefix("grpc://")
        kinds = _malformed(jpeg, png)
        codes: dict[str, int] = {}
        lock = threading.Lock()
        with grpc.insecure_channel(target) as channel:
            methods = {name: channel.unary_unary(f"/jitnet.teacher.v1.Teacher/{name}") for name in ("Label", "GetInfo")}
            stream = channel.stream_stream("/jitnet.teacher.v1.Teacher/LabelStream")

            def send(k: int) -> None:
                method, data = kinds[k % len(kinds)]
                if method == "Label" and data.startswith(b"\x0a\x03bad"):  # the named ones: each from its own camera
                    data = data.replace(b"\x0a\x03bad", b"\x0a\x03" + f"m{k % 100:02d}".encode()[:3], 1)
                try:
                    if method == "LabelStream":
                        answers = list(stream(iter([data, data]), timeout=60))
                        code = "inline" if len(answers) == 2 else f"stream:{len(answers)}"
                    else:
                        methods[method](data, timeout=60)
                        code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes[code] = codes.get(code, 0) + 1

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(send, range(WARM_UP)))
                after_warm_up = _rss_bytes(proc.pid)
                list(pool.map(send, range(WARM_UP, TOTAL)))
            final = _rss_bytes(proc.pid)
        print(f"malformed: {codes}; server RSS after {WARM_UP}: {after_warm_up >> 20} MiB, after {TOTAL}: {final >> 20} MiB")
        assert proc.poll() is None, "".join(log.lines[-50:])
        with TeacherClient(url, camera_id="valid", timeout_s=60) as client:
            assert client.label(frame, ["dog"], frame_index=1).frame_index == 1
        assert sum(codes.values()) == TOTAL
        assert set(codes) <= {"INVALID_ARGUMENT", "inline", "RESOURCE_EXHAUSTED"}, codes
        assert codes.get("RESOURCE_EXHAUSTED", 0) < TOTAL / 20, codes  # refused as malformed, not paced away
        assert (final - after_warm_up) / after_warm_up < 0.10, f"RSS {after_warm_up >> 20} -> {final >> 20} MiB"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = "".join(log.lines)
    assert "Traceback" not in text, text[-4000:]
