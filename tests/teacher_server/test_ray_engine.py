"""The teacher fleet on Ray Serve: a real local Ray, real yolov5s-seg replicas, DAVIS frames, over gRPC.

One Ray per use: the command's own (first test, started and stopped by `jitnet
teacher --engine ray`), then one module fixture with two replicas for the rest.
Settings the Ray engine cannot honour are refused before any Ray starts, so
those tests need none.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the fleet extra (ray[serve]) is not installed")

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402

from core.labels import RETRY_AFTER_KEY  # noqa: E402
from edge_agent.teacher_client import TeacherClient, TeacherRejected  # noqa: E402
from protos import teacher_pb2, teacher_pb2_grpc  # noqa: E402
from teacher_server.ray_engine import FleetOptions, build_app, start_fleet  # noqa: E402
from teacher_server.ray_settings import CHECKED, HONOURED, unclassified  # noqa: E402
from teacher_server.server import ServerConfig, start_server  # noqa: E402
from teacher_helpers import REPO_ROOT, davis_jpeg, davis_rgb, yolo_backend  # noqa: E402

CAMERAS = 8
TOKENS = {f"cam{c}": f"token-of-camera-{c}" for c in range(CAMERAS)} | {
    name: f"token-of-the-{name}" for name in ("agent", "idler", "flooder", "honest")}
#: The module fleet's limits: per camera 3 calls, 2 streams; 16 MiB of decoded frames in all.
CALLS_PER_CAMERA, STREAMS_PER_CAMERA, FRAME_BYTES = 3, 2, 16 * 1024 * 1024
# Each camera sends its own real frames: (sequence, group) and two frame indices.
SCENES = [("dog", "dog"), ("car-shadow", "auto"), ("breakdance", "person"), ("horsejump-high", "person")]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(condition, timeout: float, what: str, every: float = 0.1):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def _descendants(pid: int) -> set[int]:
    """All processes below pid, from /proc (Ray's head processes and every worker are in there)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode("utf-8", "replace") and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _request(camera: str, index: int, jpeg: bytes, group: str) -> teacher_pb2.LabelRequest:
    return teacher_pb2.LabelRequest(camera_id=camera, frame_index=index, encoded=jpeg, groups=[group])


# -- the command ------------------------------------------------------------------------------------
def test_jitnet_teacher_engine_ray_serves_with_tokens_health_and_metrics_and_leaves_no_ray_processes(tmp_path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("cli-cam token-of-the-cli-camera\n")
    port, metrics_port = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live below it
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    health_port = _free_port()
    cmd = [sys.executable, "-m", "cli.main", "teacher", "--engine", "ray", "--replicas", "1", "--port", str(port),
           "--http-port", str(_free_port()), "--metrics-port", str(metrics_port), "--tokens", str(tokens), "--max-batch", "2",
           "--health-port", str(health_port)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if re.search(r"teacher fleet .* listening on grpc://", line):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ray_processes: set[int] = set()
    try:
        assert ready.wait(180), "".join(lines[-40:])
        frame = np.ascontiguousarray(davis_rgb("breakdance", 0)[::2, ::2])
        url = f"grpc://127.0.0.1:{port}"
        with TeacherClient(url, camera_id="cli-cam", token="token-of-the-cli-camera", timeout_s=60) as client:
            labels = client.label(frame, ["person"], frame_index=7)
            assert labels.frame_index == 7 and labels.label_map.shape == frame.shape[:2] and (labels.label_map == 1).any()
            assert client.info().model_name == "yolov5s-seg"
        with TeacherClient(url, camera_id="cli-cam", token="not-the-token-of-it", timeout_s=30) as stranger:
            with pytest.raises(TeacherRejected) as refused:
                stranger.label(frame, ["person"], frame_index=8)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        for target in (f"127.0.0.1:{port}", f"127.0.0.1:{health_port}"):  # the proxy's, and --health-port's
            with grpc.insecure_channel(target) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="jitnet.teacher.v1.Teacher"), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING, target

        def exported() -> str:  # Ray's metrics agent exports ours beside its own, every few seconds
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            ok = re.search(r'^ray_jitnet_teacher_requests_total\{[^}]*code="OK"[^}]*\} ([0-9.]+)', text, re.M)
            refused = re.search(r'^ray_jitnet_teacher_requests_total\{[^}]*code="UNAUTHENTICATED"[^}]*\} ([0-9.]+)', text, re.M)
            return text if ok and refused and float(ok.group(1)) >= 1 and "ray_serve_" in text else ""

        _until(exported, 90, "our request counters and Serve's metrics on the metrics port", every=1.0)
        ray_processes = _descendants(proc.pid)
        assert len(ray_processes) >= 5  # GCS, raylet, controller, proxy, replicas ...
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, "".join(lines[-40:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    try:
        _until(lambda: not [p for p in ray_processes if _alive(p)], 30, "Ray processes of the command ending")
        assert _processes_mentioning(ray_tmp) == []
        assert any("teacher fleet jitnet-teacher stopped" in line for line in lines)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# -- a fleet of two replicas ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet():
    handle = start_fleet(
        "yolov5s-seg",
        fleet=FleetOptions(replicas=2, threads_per_replica=1, http_port=_free_port()),
        port=_free_port(), max_batch=4, max_delay_ms=20, max_queue_per_camera=2, tokens=TOKENS,
        max_message_bytes=1024 * 1024, max_calls_per_camera=CALLS_PER_CAMERA, max_streams_per_camera=STREAMS_PER_CAMERA,
        max_frame_bytes=FRAME_BYTES, health_port=0,
    )
    try:
        yield handle
    finally:
        handle.stop()


def _camera_requests(c: int) -> list[teacher_pb2.LabelRequest]:
    seq, group = SCENES[c % len(SCENES)]
    return [_request(f"cam{c}", 100 * c + k, davis_jpeg(seq, 10 * (c // len(SCENES)) + 20 * k), group) for k in range(2)]


def test_two_replicas_answer_eight_cameras_with_their_frames_and_the_native_label_maps(fleet) -> None:
    def camera(url: str, c: int, token: bool):
        with TeacherClient(url, camera_id=f"cam{c}", token=TOKENS[f"cam{c}"] if token else None, timeout_s=120) as client:
            return [client.send(r) for r in _camera_requests(c)]

    with ThreadPoolExecutor(CAMERAS) as pool:
        fleet_answers = list(pool.map(lambda c: camera(fleet.url, c, True), range(CAMERAS)))
    with start_server(yolo_backend(), port=0, max_batch=1, warmup=False) as native, ThreadPoolExecutor(4) as pool:
        native_answers = list(pool.map(lambda c: camera(native.url, c, False), range(CAMERAS)))
    for c in range(CAMERAS):
        for k, (ours, theirs) in enumerate(zip(fleet_answers[c], native_answers[c])):
            assert ours.frame_index == theirs.frame_index == 100 * c + k
            assert ours.groups == theirs.groups == (SCENES[c % len(SCENES)][1],)
            assert ours.model_name == theirs.model_name and ours.model_version == theirs.model_version
            assert ours.label_map.shape == theirs.label_map.shape == (480, 854)
            # Batched with other cameras' frames: float noise may move a boundary pixel, no more.
            assert (ours.label_map == theirs.label_map).mean() > 0.999, (c, k)
            assert (ours.label_map > 0).sum() == pytest.approx((theirs.label_map > 0).sum(), rel=0.01, abs=50)
            assert [i.class_name for i in ours.instances] == [i.class_name for i in theirs.instances]
    assert max(a.timings["batch_size"] for answers in fleet_answers for a in answers) > 1
    per_replica = fleet.replica_stats()
    assert len(per_replica) == 2 and all(row["computed"] >= 1 for row in per_replica.values()), per_replica


def test_a_token_of_another_camera_or_none_is_refused(fleet) -> None:
    frame = _camera_requests(0)[0]
    for token in ("token-of-camera-1", None):
        with TeacherClient(fleet.url, camera_id="cam0", token=token, timeout_s=30) as client:
            with pytest.raises(TeacherRejected) as refused:
                client.send(frame)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_label_stream_answers_every_frame_in_order_with_a_bad_frame_as_an_error(fleet) -> None:
    good = _camera_requests(1)
    bad = teacher_pb2.LabelRequest(camera_id="cam1", frame_index=7, encoded=b"not a jpeg", groups=["auto"])
    with TeacherClient(fleet.url, camera_id="cam1", token=TOKENS["cam1"]) as client:
        answers = list(client.stream([good[0], bad, good[1]], timeout_s=120))
    assert [a.frame_index for a in answers] == [good[0].frame_index, 7, good[1].frame_index]
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not answers[1].label_map_png
    assert all(not a.HasField("error") and a.label_map_png for a in (answers[0], answers[2]))


def _outcome(call):
    """A call's frame_index, or (status code, retry-after-ms hint, details) when it was refused."""
    try:
        return call.result().frame_index
    except grpc.RpcError as error:
        return error.code(), dict(error.trailing_metadata() or ()).get(RETRY_AFTER_KEY), error.details()


def _held_stream(stub, requests: list, release: threading.Event, metadata):
    """A LabelStream that sends `requests`, then stays open (sending nothing) until `release` is set."""

    def feed():
        yield from requests
        release.wait(300)

    return stub.LabelStream(feed(), timeout=300, metadata=metadata)


def test_a_camera_over_its_call_or_stream_share_is_refused_with_retry_after_and_frames_over_the_limits_are_refused(fleet) -> None:
    # Each part is another camera's: a camera refused once is on probation until its hint expires.
    def auth(camera: str) -> tuple:
        return (("authorization", f"Bearer {TOKENS[camera]}"),)

    request = _camera_requests(2)[0]
    stream_request = _request("cam3", 30, davis_jpeg("dog", 30), "dog")
    release = threading.Event()
    with grpc.insecure_channel(fleet.target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        calls = [stub.Label.future(request, timeout=120, metadata=auth("cam2")) for _ in range(2 * CALLS_PER_CAMERA)]
        outcomes = [_outcome(c) for c in calls]
        # Streams: the camera's share is STREAMS_PER_CAMERA open at once, the next one is refused.
        streams = [_held_stream(stub, [stream_request], release, auth("cam3")) for _ in range(STREAMS_PER_CAMERA)]
        try:
            assert [next(s).frame_index for s in streams] == [30] * STREAMS_PER_CAMERA
            with pytest.raises(grpc.RpcError) as one_stream_too_many:
                next(_held_stream(stub, [stream_request], release, auth("cam3")))
        finally:
            release.set()
            for s in streams:
                s.cancel()
        # A frame whose decoded pixels are more than all the frame memory (26 MB > 16 MiB), a message over 1 MiB.
        ok, huge = cv2.imencode(".jpg", np.zeros((2160, 4096, 3), np.uint8))
        assert ok and huge.nbytes < 1024 * 1024
        with pytest.raises(grpc.RpcError) as over_frame_memory:
            stub.Label(teacher_pb2.LabelRequest(camera_id="cam4", frame_index=8, groups=["dog"], encoded=huge.tobytes()),
                       timeout=60, metadata=auth("cam4"))
        rgb = davis_rgb("dog", 0)  # 1.2 MB raw: over the fleet's 1 MiB limit
        big = teacher_pb2.LabelRequest(camera_id="cam4", frame_index=9, groups=["dog"],
                                       raw=teacher_pb2.RawImage(data=rgb.tobytes(), height=480, width=854, channels=3))
        with pytest.raises(grpc.RpcError) as too_large:
            stub.Label(big, timeout=60, metadata=auth("cam4"))
    answered = [o for o in outcomes if o == request.frame_index]
    refused = [o for o in outcomes if o != request.frame_index]
    assert CALLS_PER_CAMERA <= len(answered) < len(outcomes) and refused, outcomes
    assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and int(ms) >= 1 for code, ms, _ in refused), refused
    # Through Serve's proxy a refused stream's hint travels in its message (see ray_status.py).
    assert one_stream_too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(r"retry after \d+ ms", one_stream_too_many.value.details()), one_stream_too_many.value.details()
    assert over_frame_memory.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "MiB" in over_frame_memory.value.details()
    assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_deadline_stated_in_metadata_reaches_the_admission(fleet) -> None:
    from teacher_server.ray_deployments import DEADLINE_KEY

    request = _request("cam5", 50, davis_jpeg("dog", 50), "dog")
    with grpc.insecure_channel(fleet.target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)

        def call(deadline_ms: str):
            metadata = (("authorization", f"Bearer {TOKENS['cam5']}"), (DEADLINE_KEY, deadline_ms))
            return _outcome(stub.Label.future(request, timeout=120, metadata=metadata))

        assert call("60000") == 50  # in time: answered (and measured, if nothing was before)
        too_soon = call("5")  # 5 ms cannot hold a frame the fleet just took far longer for
        malformed = call("soon")
    assert too_soon[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "deadline" in too_soon[2], too_soon
    assert malformed[0] == grpc.StatusCode.INVALID_ARGUMENT and DEADLINE_KEY in malformed[2], malformed


def test_health_on_its_own_port_and_no_reflection_with_tokens(fleet) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{fleet.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="jitnet.teacher.v1.Teacher"), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(fleet.target) as channel:  # reflection=None: off with tokens, as on the native server
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
        with pytest.raises(grpc.RpcError) as no_reflection:
            list(listing)
    assert no_reflection.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)


def test_a_replica_killed_mid_load_loses_no_camera_request_and_the_agent_keeps_segmenting(fleet, artifacts) -> None:
    import ray

    import sdk

    victim = fleet.model_replicas()[0]
    resent_before = fleet.frames_resent()
    computed_before = fleet.stats.computed
    rounds = 3
    results: dict[int, list] = {}
    failures: list[BaseException] = []

    def camera(c: int) -> None:
        try:
            with TeacherClient(fleet.url, camera_id=f"cam{c}", token=TOKENS[f"cam{c}"], timeout_s=180, max_attempts=20) as client:
                requests = _camera_requests(c)
                results[c] = [client.send(requests[r % 2], deadline_s=180).frame_index for r in range(rounds)]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    cameras = [threading.Thread(target=camera, args=(c,)) for c in range(CAMERAS)]
    for t in cameras:
        t.start()
    # Kill once the load is on: a few frames answered, more in flight on both replicas.
    _until(lambda: fleet.stats.computed >= computed_before + 4, 120, "the first answers under load")
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    frames = [np.ascontiguousarray(davis_rgb("breakdance", i)[::2, ::2]) for i in range(0, 40, 2)]
    with sdk.connect(fleet.url, artifacts=artifacts, classes=["person"], token=TOKENS["agent"], camera_id="agent",
                     teacher_timeout_s=180) as session:
        segmented = list(session.segment(iter(frames), live=False))
    for t in cameras:
        t.join(300)
    assert not failures, failures
    for c in range(CAMERAS):
        assert results[c] == [100 * c + r % 2 for r in range(rounds)]
    assert len(segmented) == len(frames) and all(r.labels.shape == frames[0].shape[:2] for r in segmented)
    assert sum(r.teacher_labelled for r in segmented) >= 1
    assert fleet.frames_resent() > resent_before  # frames were in flight on the killed replica, and came back
    replaced = _until(lambda: (lambda names: names if len(names) == 2 and victim not in names else None)(fleet.model_replicas()),
                      120, "Serve replacing the killed replica")
    assert victim not in replaced


def test_with_a_second_application_on_the_proxy_the_client_sends_the_default_application_name(fleet) -> None:
    from ray import serve

    class _OtherApplication:  # defined here, so Ray ships it by value (tests are no package its workers import)
        """Another team's Serve application on the same proxy (it answers nothing of ours)."""

        async def GetInfo(self, request, grpc_context=None):
            grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            return teacher_pb2.InfoResponse()

    serve.run(serve.deployment(_OtherApplication, name="Other").options(ray_actor_options={"num_cpus": 0}).bind(),
              name="someone-else", route_prefix="/someone-else")
    try:
        request = _camera_requests(3)[0]
        with grpc.insecure_channel(fleet.target) as channel:  # a bare call: the proxy cannot tell which app
            with pytest.raises(grpc.RpcError) as unrouted:
                teacher_pb2_grpc.TeacherStub(channel).GetInfo(teacher_pb2.InfoRequest(), timeout=30)
        assert unrouted.value.code() == grpc.StatusCode.NOT_FOUND
        with TeacherClient(fleet.url, camera_id="cam3", token=TOKENS["cam3"], timeout_s=120) as client:
            assert client.info().model_name == "yolov5s-seg" and client.application == "jitnet-teacher"
            assert client.send(request).frame_index == request.frame_index
        with TeacherClient(fleet.url, camera_id="cam3", token=TOKENS["cam3"], application="someone-else") as asked:
            with pytest.raises(TeacherRejected) as elsewhere:
                asked.info()
        assert elsewhere.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        serve.delete("someone-else")


def test_a_serve_config_files_args_become_the_same_configuration_as_the_command_line(tmp_path) -> None:
    from teacher_server.ray_engine import fleet_from_args, model_deployment_options

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("cam0 token-of-camera-0\n")
    backend, config, options, model = fleet_from_args(
        {"backend": "yolov7-seg", "device": "cuda", "port": 9000, "max_batch": 4, "max_queue": 32, "tokens_file": str(tokens),
         "min_replicas": 1, "max_replicas": 4, "gpus_per_replica": 0.5, "threads_per_replica": 2})
    assert (backend, model, config.port, config.tokens) == ("yolov7-seg", {"device": "cuda"}, 9000, {"cam0": "token-of-camera-0"})
    deployment = model_deployment_options(config, options)
    assert deployment["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 4}
    assert "num_replicas" not in deployment and deployment["max_queued_requests"] == 32 and deployment["max_ongoing_requests"] == 8
    assert deployment["ray_actor_options"]["num_gpus"] == 0.5 and deployment["ray_actor_options"]["num_cpus"] == 2
    with pytest.raises(ValueError, match="unknown teacher fleet args"):
        fleet_from_args({"replica": 2})
    with pytest.raises(ValueError, match="min-replicas"):
        FleetOptions(min_replicas=2)


# -- every setting honoured or refused at start -------------------------------------------------
def test_every_server_setting_is_either_honoured_by_the_ray_engine_or_checked_at_start() -> None:
    assert unclassified() == [], "classify new ServerConfig fields in teacher_server/ray_settings.py"
    assert not set(HONOURED) & set(CHECKED)
    assert set(HONOURED) | set(CHECKED) == {f.name for f in fields(ServerConfig)}


REFUSED_AT_START = [
    ({"tls_cert": "cert.pem", "tls_key": "key.pem"}, {}, "tls_cert"),
    ({"port": 0}, {}, "port=0"),
    ({"host": "127.0.0.1"}, {}, "host='127.0.0.1'"),
    ({"metrics_token": "a-metrics-secret"}, {}, "metrics_token"),
    ({"metrics_tls": True}, {}, "metrics_tls"),
    ({"metrics_port": 9464, "metrics_host": "10.1.2.3"}, {}, "metrics_host"),
    ({"metrics_port": 9464}, {"address": "auto"}, "metrics_port"),
    ({"policy": "lottery"}, {}, "policy"),
    ({"max_calls": 300}, {}, "max_calls"),
]


@pytest.mark.parametrize("overrides,options,named", REFUSED_AT_START, ids=[c[2] for c in REFUSED_AT_START])
def test_a_setting_the_ray_engine_cannot_honour_is_refused_before_ray_starts_with_one_line_naming_it(overrides, options, named) -> None:
    with pytest.raises(ValueError) as refused:  # before any Ray: "auto" would need a running cluster
        start_fleet("yolov5s-seg", fleet=FleetOptions(**options), **{"port": 50999, **overrides})
    message = str(refused.value)
    assert named in message and "\n" not in message, message


@pytest.mark.parametrize("args,named", [({"health_port": 0}, "health_port"), ({"metrics_port": 9464}, "metrics_port")])
def test_a_serve_config_file_with_a_setting_only_the_command_can_serve_is_refused_naming_it(args, named) -> None:
    with pytest.raises(ValueError) as refused:
        build_app({"port": 50051, **args})
    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_the_command_refuses_an_unsupported_setting_with_one_line_and_exit_code_2(tmp_path) -> None:
    secret = tmp_path / "metrics-token"
    secret.write_text("a-metrics-secret\n")
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "teacher", "--engine", "ray", "--port", str(_free_port()),
         "--metrics-token-file", str(secret)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "cannot honour" in line]
    assert len(errors) == 1 and "metrics_token" in errors[0] and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_second_fleet_whose_proxy_options_differ_from_the_running_serve_is_refused_naming_them(fleet) -> None:
    from ray import serve

    with pytest.raises(ValueError) as refused:
        start_fleet("yolov5s-seg", fleet=FleetOptions(http_port=_free_port(), app_name="another-teacher"),
                    port=_free_port(), tokens=TOKENS)
    assert "port=" in str(refused.value) and "\n" not in str(refused.value)
    assert "another-teacher" not in serve.status().applications


# -- one camera cannot take the fleet from the others -------------------------------------------
@pytest.mark.slow
def test_three_hundred_idle_streams_of_one_camera_leave_another_camera_answered_ten_of_ten(fleet) -> None:
    metadata = (("authorization", f"Bearer {TOKENS['idler']}"),)
    release = threading.Event()
    ended: list = []
    channels = [grpc.insecure_channel(fleet.target) for _ in range(4)]
    calls = []
    try:
        for i in range(300):
            call = _held_stream(teacher_pb2_grpc.TeacherStub(channels[i % len(channels)]), [], release, metadata)
            call.add_done_callback(lambda c: ended.append(c.code()))
            calls.append(call)
        # All but the camera's stream share are refused at once (or closed for sending nothing).
        _until(lambda: len(ended) >= 300 - STREAMS_PER_CAMERA, 180, "the idle streams over the camera's share ending")
        assert set(ended) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}, set(ended)
        honest = (("authorization", f"Bearer {TOKENS['honest']}"),)
        stub = teacher_pb2_grpc.TeacherStub(channels[0])
        answers = [stub.Label(_request("honest", k, davis_jpeg("dog", 2 * k), "dog"), timeout=60, metadata=honest)
                   for k in range(10)]
    finally:
        release.set()
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
    assert [a.frame_index for a in answers] == list(range(10)) and all(a.label_map_png for a in answers)


@pytest.mark.slow
def test_a_camera_flooding_calls_and_ignoring_hints_leaves_an_honest_camera_answered_in_time(fleet) -> None:
    flood = _request("flooder", 0, davis_jpeg("car-shadow", 0), "auto")
    flood_md = (("authorization", f"Bearer {TOKENS['flooder']}"),)
    honest_md = (("authorization", f"Bearer {TOKENS['honest']}"),)
    stop = threading.Event()
    outcomes: list[str] = []

    def flooder() -> None:
        with grpc.insecure_channel(fleet.target) as channel:
            stub = teacher_pb2_grpc.TeacherStub(channel)
            while not stop.is_set():  # retry-after hints ignored: the next call goes at once
                try:
                    stub.Label(flood, timeout=10, metadata=flood_md)
                    outcomes.append("OK")
                except grpc.RpcError as error:
                    outcomes.append(error.code().name)

    threads = [threading.Thread(target=flooder, daemon=True) for _ in range(16)]
    for t in threads:
        t.start()
    answered = 0
    try:
        _until(lambda: "RESOURCE_EXHAUSTED" in outcomes, 120, "the flood being refused")
        with grpc.insecure_channel(fleet.target) as channel:
            stub = teacher_pb2_grpc.TeacherStub(channel)
            start = time.monotonic()
            for k in range(10):  # 1 frame/s, each with a 5 s deadline
                stop.wait(max(0.0, start + k - time.monotonic()))
                try:
                    answer = stub.Label(_request("honest", 100 + k, davis_jpeg("breakdance", 2 * k), "person"),
                                        timeout=5, metadata=honest_md)
                    answered += answer.frame_index == 100 + k
                except grpc.RpcError:
                    pass
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert answered >= 9, (answered, {code: outcomes.count(code) for code in set(outcomes)})
    assert outcomes.count("RESOURCE_EXHAUSTED") > outcomes.count("OK")
