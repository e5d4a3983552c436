"""A teacher no client can take down: call and stream limits, idle streams, bounded decoding, tidy edges.

Every test runs the real server (yolov5s-seg on CPU) on a free localhost port
and talks to it over gRPC, as a camera (or an attacker) would.
"""
from __future__ import annotations

import logging
import shutil
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.labels import RETRY_AFTER_KEY
from edge_agent.teacher_client import TeacherClient
from protos import teacher_pb2, teacher_pb2_grpc
from teacher_server.codec import DEFAULT_MAX_PIXELS
from teacher_server.labeler import Labeler
from teacher_server.limits import CallLimiter, CallLimits, LimitExceeded
from teacher_server.server import start_server
from teacher_helpers import TOKENS, SlowBackend, davis_jpeg, davis_rgb, small_jpeg, wait_until, yolo_backend
from teacher_helpers import label_request as _request


@pytest.fixture(scope="module", name="small_jpeg")
def _small_jpeg() -> bytes:
    return small_jpeg(4)


def _count(handle, code: str) -> float:
    return handle.metrics.registry.get_sample_value("jitnet_teacher_requests_total", {"code": code}) or 0.0


def _Blocked(release: threading.Event, first=None):
    """A request iterator that sends `first` (if any) and then nothing until released."""
    if first is not None:
        yield first
    release.wait()


# -- exhaustion ------------------------------------------------------------------------------------
def test_unauthenticated_reflection_and_label_streams_cannot_lock_out_a_camera(small_jpeg) -> None:
    """With tokens on, 300 idle reflection streams and 300 abandoned LabelStreams hold nothing."""
    with start_server(yolo_backend(), port=0, tokens=TOKENS, health_port=0, warmup=False) as handle:
        release = threading.Event()
        channels = [grpc.insecure_channel(handle.target) for _ in range(6)]
        try:
            reflections = [
                reflection_pb2_grpc.ServerReflectionStub(channels[k % 3]).ServerReflectionInfo(_Blocked(release), timeout=120)
                for k in range(300)
            ]
            streams = [
                teacher_pb2_grpc.TeacherStub(channels[3 + k % 3]).LabelStream(_Blocked(release), timeout=120)
                for k in range(300)
            ]
            # Both are refused at once instead of being held: reflection is off, streams need a token.
            wait_until(lambda: all(c.done() for c in reflections + streams), timeout=60)
            assert {c.code() for c in reflections} == {grpc.StatusCode.UNIMPLEMENTED}
            assert {c.code() for c in streams} == {grpc.StatusCode.UNAUTHENTICATED}
            with pytest.raises(grpc.RpcError) as info:  # no health on the gRPC port without a token either
                health_pb2_grpc.HealthStub(channels[0]).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with TeacherClient(handle.url, camera_id="cam-a", token=TOKENS["cam-a"], timeout_s=60) as client:
                assert client.send(_request("cam-a", 7, small_jpeg)).frame_index == 7
        finally:
            release.set()
            for channel in channels:
                channel.close()
        # Orchestrators check health on its own local port.
        with grpc.insecure_channel(f"127.0.0.1:{handle.health_port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_abandoned_streams_get_refused_with_retry_after_then_time_out_and_a_camera_is_answered(small_jpeg) -> None:
    """Without tokens, 300 abandoned LabelStreams: the server's own limit (below gRPC's) refuses with
    a retry hint, idle ones end, and a camera that honours the hint is answered."""
    # Idle streams end after 20 s: long enough that all 300 are open at once even on a loaded machine
    # (with 1 s the first ones timed out before the last were opened, and the limit was never reached).
    with start_server(yolo_backend(), port=0, stream_idle_s=20.0, first_frame_s=20.0, warmup=False) as handle:
        release = threading.Event()
        channels = [grpc.insecure_channel(handle.target) for _ in range(3)]
        try:
            streams = [
                teacher_pb2_grpc.TeacherStub(channels[k % 3]).LabelStream(_Blocked(release), timeout=120)
                for k in range(300)
            ]
            wait_until(lambda: sum(c.done() for c in streams) >= 300 - 240, timeout=60)
            refused = [c for c in streams if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert refused, "300 streams against a limit of 240 calls"
            for call in refused:  # the server said no (with a hint), not gRPC's bare limit
                assert int(dict(call.trailing_metadata())[RETRY_AFTER_KEY]) > 0
            with TeacherClient(handle.url, camera_id="cam0", timeout_s=60, max_attempts=100) as client:
                labels = client.send(_request("cam0", 3, small_jpeg), deadline_s=60)
            assert labels.frame_index == 3
            wait_until(lambda: all(c.done() for c in streams), timeout=120)
            assert {c.code() for c in streams} <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
            assert any("no frame for 20 s" in (c.details() or "") for c in streams)
        finally:
            release.set()
            for channel in channels:
                channel.close()
        wait_until(lambda: handle._servicer.limiter.calls == 0)


def test_one_camera_over_its_stream_limit_is_refused_while_another_camera_is_answered(small_jpeg) -> None:
    with start_server(yolo_backend(), port=0, tokens=TOKENS, max_streams_per_camera=2, warmup=False) as handle:
        release = threading.Event()
        metadata = (("authorization", f"Bearer {TOKENS['cam-a']}"),)
        with grpc.insecure_channel(handle.target) as channel:
            stub = teacher_pb2_grpc.TeacherStub(channel)
            try:
                streams = [stub.LabelStream(_Blocked(release, _request("cam-a", k, small_jpeg)), timeout=120, metadata=metadata)
                           for k in range(2)]
                for k, call in enumerate(streams):  # both of the camera's streams work
                    assert next(call).frame_index == k
                third = stub.LabelStream(_Blocked(release, _request("cam-a", 2, small_jpeg)), timeout=120, metadata=metadata)
                with pytest.raises(grpc.RpcError) as info:
                    next(third)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "open streams (limit 2)" in info.value.details()
                assert int(dict(info.value.trailing_metadata())[RETRY_AFTER_KEY]) > 0
                with TeacherClient(handle.url, camera_id="cam-b", token=TOKENS["cam-b"], timeout_s=60) as client:
                    assert client.send(_request("cam-b", 9, small_jpeg)).frame_index == 9
            finally:
                release.set()


def test_one_camera_over_its_call_limit_is_refused_while_another_camera_is_answered(small_jpeg) -> None:
    slow = Labeler(SlowBackend(yolo_backend(), delay_s=1.0))
    with start_server(slow, port=0, max_calls_per_camera=2, max_queue_per_camera=8, warmup=False) as handle:
        def call(camera: str, k: int):
            with grpc.insecure_channel(handle.target) as channel:
                try:
                    teacher_pb2_grpc.TeacherStub(channel).Label(_request(camera, k, small_jpeg), timeout=120)
                    return "ok"
                except grpc.RpcError as exc:
                    return exc.code(), dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_KEY)

        with ThreadPoolExecutor(6) as pool:
            flood = [pool.submit(call, "greedy", k) for k in range(5)]
            wait_until(lambda: sum(f.done() for f in flood) >= 3)  # 3 of 5 over the limit of 2, refused at once
            other = pool.submit(call, "modest", 0)
            outcomes = [f.result() for f in flood]
            assert other.result() == "ok"
        refused = [o for o in outcomes if o != "ok"]
        assert len(refused) == 3 and outcomes.count("ok") == 2
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and int(hint) > 0 for code, hint in refused)


def test_calls_over_the_servers_own_limit_get_a_hint_not_grpcs_bare_refusal(small_jpeg) -> None:
    slow = Labeler(SlowBackend(yolo_backend(), delay_s=1.0))
    with start_server(slow, port=0, max_concurrent_rpcs=8, max_calls=4, max_queue=16, max_queue_per_camera=4,
                      warmup=False) as handle:
        def call(k: int):
            with grpc.insecure_channel(handle.target) as channel:
                try:
                    teacher_pb2_grpc.TeacherStub(channel).Label(_request(f"cam{k}", k, small_jpeg), timeout=120)
                    return "ok"
                except grpc.RpcError as exc:
                    return exc.code(), dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_KEY)

        with ThreadPoolExecutor(7) as pool:
            outcomes = list(pool.map(call, range(7)))
        refused = [o for o in outcomes if o != "ok"]
        assert len(refused) == 3 and outcomes.count("ok") == 4, outcomes
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and int(hint) > 0 for code, hint in refused)
        assert handle._servicer.limiter.refused == {"calls": 3}


def test_call_limiter_counts_per_camera_and_in_total() -> None:
    now = [0.0]
    limiter = CallLimiter(CallLimits(max_calls=3, max_calls_per_camera=2, max_streams_per_camera=1, max_frame_bytes=100,
                                     reserved_for_new=0, rate_per_camera=None), clock=lambda: now[0])
    anonymous = [limiter.open(None) for _ in range(3)]
    with pytest.raises(LimitExceeded):
        limiter.open(None)
    for ticket in anonymous:
        ticket.release()
        ticket.release()  # once only
    stream = limiter.open("a", stream=True)
    with pytest.raises(LimitExceeded, match="open streams") as info:
        limiter.open("a", stream=True)
    now[0] += info.value.retry_after_s  # honour the hint
    call = limiter.open("a")
    now[0] += 1.0
    with pytest.raises(LimitExceeded, match="holds 2 calls"):
        limiter.open("a")
    limiter.open("b")
    stream.release()
    now[0] += 1.0
    limiter.open("a", stream=True)
    assert limiter.calls == 3 and limiter.camera_calls("a") == 2
    call.release()
    limiter.acquire_bytes(60)
    with pytest.raises(LimitExceeded, match="MiB of frames"):
        limiter.acquire_bytes(60)
    limiter.release_bytes(60)
    limiter.acquire_bytes(60)
    assert limiter.refused == {"calls": 1, "camera_streams": 1, "camera_calls": 1, "frame_bytes": 1}


# -- bounded decoding ---------------------------------------------------------------------------------
def _header_bomb(small_jpeg: bytes, height: int, width: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims height x width."""
    data = bytearray(small_jpeg)
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_header_bomb_jpeg_is_refused_before_decoding_and_memory_stays_flat(small_jpeg) -> None:
    """8 concurrent 6000x6000-claiming JPEGs of a few KB: refused from the header; RSS grows < 64 MB
    (decoding them would take 8 x 108 MB)."""
    bomb = _header_bomb(small_jpeg, 6000, 6000)
    assert len(bomb) < 64 * 1024
    assert cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (6000, 6000)  # it really is a bomb
    with start_server(yolo_backend(), port=0, warmup=False) as handle:
        baseline, peak, stop = _rss_bytes(), [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def send(k: int):
            with grpc.insecure_channel(handle.target) as channel:
                try:
                    teacher_pb2_grpc.TeacherStub(channel).Label(_request(f"bomb{k}", k, bomb), timeout=60)
                except grpc.RpcError as exc:
                    return exc.code(), exc.details()
            return None

        try:
            with ThreadPoolExecutor(8) as pool:
                outcomes = list(pool.map(send, range(8)))
        finally:
            stop.set()
            sampler.join()
        for code, details in outcomes:
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert f"6000x6000 = 36000000 pixels; this server accepts at most {DEFAULT_MAX_PIXELS}" in details
        assert peak[0] - baseline < 64 * 1024 * 1024
        assert handle.stats.submitted == 0


def test_frame_memory_is_bounded_by_bytes_and_a_frame_over_all_of_it_is_invalid(small_jpeg) -> None:
    frame = davis_rgb("dog", 10)
    frame_bytes = frame.nbytes
    slow = Labeler(SlowBackend(yolo_backend(), delay_s=0.5))
    with start_server(slow, port=0, max_batch=1, max_frame_bytes=int(2.5 * frame_bytes), warmup=False) as handle:
        raw = teacher_pb2.RawImage(data=frame.tobytes(), height=frame.shape[0], width=frame.shape[1], channels=3)

        def send(k: int):
            with grpc.insecure_channel(handle.target) as channel:
                try:
                    teacher_pb2_grpc.TeacherStub(channel).Label(
                        teacher_pb2.LabelRequest(camera_id=f"c{k}", frame_index=k, raw=raw, groups=["dog"]), timeout=120)
                    return "ok"
                except grpc.RpcError as exc:
                    return exc.code(), exc.details(), dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_KEY)

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(send, range(8)))
        refused = [o for o in outcomes if o != "ok"]
        assert refused and outcomes.count("ok") >= 2
        for code, details, hint in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "MiB of frames" in details and int(hint) > 0
        wait_until(lambda: handle._servicer.limiter.frame_bytes == 0)
    with start_server(yolo_backend(), port=0, max_frame_bytes=frame_bytes // 2, warmup=False) as handle:
        with grpc.insecure_channel(handle.target) as channel:
            with pytest.raises(grpc.RpcError) as info:
                teacher_pb2_grpc.TeacherStub(channel).Label(
                    teacher_pb2.LabelRequest(camera_id="big", raw=raw, groups=["dog"]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "holds at most" in info.value.details()


# -- tidy edges ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    handle = start_server(yolo_backend(), port=0, metrics_port=0, warmup=False)
    yield handle
    handle.stop(grace=10)


def test_long_camera_ids_and_group_names_are_invalid_with_short_messages(server, small_jpeg) -> None:
    cases = {
        "camera id": (teacher_pb2.LabelRequest(camera_id="c" * 129, encoded=small_jpeg, groups=["dog"]), "camera_id has 129 characters"),
        "group name": (teacher_pb2.LabelRequest(camera_id="cam", encoded=small_jpeg, groups=["g" * 20000]), "longer than 64 characters"),
        "many groups": (teacher_pb2.LabelRequest(camera_id="cam", encoded=small_jpeg, groups=[f"x{k}" for k in range(5000)]), "groups requested"),
    }
    with grpc.insecure_channel(server.target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        for name, (request, message) in cases.items():
            with pytest.raises(grpc.RpcError) as info:
                stub.Label(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert message in info.value.details(), name
            assert len(info.value.details()) <= 600, name
        # A long unknown group name (under the limit) is echoed cut short.
        with pytest.raises(grpc.RpcError) as info:
            stub.Label(teacher_pb2.LabelRequest(camera_id="cam", encoded=small_jpeg, groups=["u" * 64]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(info.value.details()) <= 600


def test_garbage_protobuf_is_invalid_argument_and_logged_once_not_per_request(server, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(server.target) as channel:
        label = channel.unary_unary("/jitnet.teacher.v1.Teacher/Label")  # bytes in, bytes out
        stream = channel.stream_stream("/jitnet.teacher.v1.Teacher/LabelStream")
        for k in range(50):
            with pytest.raises(grpc.RpcError) as info:
                label(b"\xff\xff\xff\xff garbage %d" % k, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid jitnet.teacher.v1 protobuf" in info.value.details()
        # On a stream the bad message gets an inline error and the stream goes on.
        answers = [teacher_pb2.LabelResponse.FromString(b) for b in stream(iter([b"\xff\xff\xff\xff"]), timeout=30)]
        assert [a.error.code for a in answers] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) <= 2, [r.getMessage() for r in records]
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.INFO)
    assert _count(server, "INVALID_ARGUMENT") >= 50


def test_answers_the_client_no_longer_waits_for_count_as_deadline_exceeded_not_ok(small_jpeg) -> None:
    # Computed within half a second after the caller's deadline: the window where it used to count OK.
    slow = Labeler(SlowBackend(yolo_backend(), delay_s=0.6))
    with start_server(slow, port=0, max_batch=1, warmup=False) as handle:
        with grpc.insecure_channel(handle.target) as channel:
            with pytest.raises(grpc.RpcError) as info:
                teacher_pb2_grpc.TeacherStub(channel).Label(_request("late", 1, small_jpeg), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: _count(handle, "DEADLINE_EXCEEDED") + _count(handle, "OK") + _count(handle, "CANCELLED") >= 1)
        wait_until(lambda: handle.stats.computed == 1)  # it was running when the caller gave up
        assert _count(handle, "OK") == 0
        assert _count(handle, "CANCELLED") == 0
        assert _count(handle, "DEADLINE_EXCEEDED") == 1


def test_metrics_listen_on_localhost_by_default_even_when_grpc_listens_everywhere() -> None:
    import argparse

    from teacher_server import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    config = cli.server_config(parser.parse_args(["--host", "0.0.0.0"]))
    assert (config.host, config.metrics_host) == ("0.0.0.0", "127.0.0.1")
    config = cli.server_config(parser.parse_args(["--metrics-host", "0.0.0.0"]))
    assert config.metrics_host == "0.0.0.0"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_metrics_can_take_tls_and_a_bearer_token(tmp_path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    with start_server(yolo_backend(), port=0, tls_cert=cert, tls_key=key, metrics_port=0, metrics_tls=True,
                      metrics_token="metrics-secret-1", warmup=False) as handle:
        assert handle.metrics_url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(handle.metrics_url, context=context, timeout=10)
        assert info.value.code == 401
        request = urllib.request.Request(handle.metrics_url, headers={"Authorization": "Bearer metrics-secret-1"})
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            assert b"jitnet_teacher_queue_depth" in reply.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port
            urllib.request.urlopen(handle.metrics_url.replace("https://", "http://"), timeout=10)
