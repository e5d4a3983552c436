"""Live sources that drop come back: a real RTSP camera (GStreamer) and a real HTTP stream (ffmpeg) are
killed mid-stream and restarted; the agent reconnects with the same student, or ends clearly when they never return."""
import http.server
import threading
import time

import cv2
import numpy as np
import pytest

import sdk
from sdk.clips import find_clip
from sdk.streams import StreamError, open_stream, read_frames
from tests.sdk.stream_helpers import Camera, cameras


@pytest.mark.slow
@pytest.mark.parametrize("kind", cameras())
def test_a_camera_that_reboots_is_reconnected_with_the_same_student(artifacts, kind):
    camera = Camera(kind).start()
    restart_errors: list[BaseException] = []

    def reboot() -> None:
        try:
            camera.start()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            restart_errors.append(exc)

    probe = np.random.default_rng(0).integers(0, 255, (288, 384, 3), dtype=np.uint8)
    restart = None
    try:
        with sdk.connect(None, artifacts=artifacts, stall_s=2.0) as session:
            # A student that has learnt something, so "the same weights" means more than the initial ones.
            trainer = session.trainer
            initial = trainer.predict(probe)
            labels = (probe[:, :, 0] > 128).astype(np.uint8)
            for _ in range(4):
                trainer.train_step(probe, labels, np.ones(labels.shape, np.float32))
            learnt = trainer.predict(probe)
            assert not np.array_equal(learnt, initial)
            results = []
            for r in session.segment(camera.url, resize=0.5):
                results.append(r)
                if len(results) == 15:  # mid-stream: the camera dies, and is back a few seconds later
                    camera.kill()
                    restart = threading.Timer(3.0, reboot)  # the scenario's downtime, not synchronisation
                    restart.start()
                assert not restart_errors, restart_errors
                if r.reconnects >= 1 and sum(x.reconnects >= 1 for x in results) >= 10:
                    break
            assert session.stream.reconnects == 1
            agent, stream_stats = session.agent, session.frames_stats
        assert np.array_equal(trainer.predict(probe), learnt)  # kept, not reloaded or reset
    finally:
        if restart is not None:
            restart.join()
        camera.kill()
    indices = [r.index for r in results]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)  # one stream, indices keep counting
    assert results[0].reconnects == 0 and results[-1].reconnects == 1
    assert all(r.labels.shape == (288, 384) for r in results)
    assert agent.counters.frames == len(results) and stream_stats.delivered == len(results)


@pytest.mark.slow
@pytest.mark.parametrize("kind", cameras())
def test_a_camera_that_never_comes_back_ends_with_a_clear_error(artifacts, kind):
    camera = Camera(kind).start()
    seen = 0
    try:
        with sdk.connect(None, artifacts=artifacts, stall_s=2.0, max_reconnects=2) as session:
            with pytest.raises(StreamError, match="gave up after 2 reconnect attempt"):
                for r in session.segment(camera.url, resize=0.5):
                    seen += 1
                    if seen == 5:
                        camera.kill()
    finally:
        camera.kill()
    assert seen >= 5


@pytest.mark.parametrize("live", [False, True])
def test_files_still_end_at_their_end(artifacts, tmp_path, live):
    clip = tmp_path / "short.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (192, 128))
    for frame in read_frames(str(find_clip("vtest")), max_frames=6, resize=(192, 128)):
        writer.write(frame[:, :, ::-1])
    writer.release()
    with sdk.connect(None, artifacts=artifacts, stall_s=0.5) as session:
        results = list(session.segment(str(clip), live=live))  # no max_frames: the file's end ends it
        assert session.stream.state == "ended" and session.stream.reconnects == 0
    if not live:
        assert [r.index for r in results] == list(range(6))
    # Live, the reader may reach the end before the last frames are segmented: those say "ended", never "reconnecting".
    states = [r.source_state for r in results]
    assert results and all(r.reconnects == 0 for r in results) and "reconnecting" not in states
    assert states == sorted(states, key=["ok", "ended"].index)


def test_a_camera_that_goes_silent_is_reopened_after_stall_s():
    """Connected but sending nothing (a hung encoder, a half-dead link): after stall_s the stream is reopened."""
    frames = read_frames(str(find_clip("bikes")), max_frames=10)
    jpegs = [cv2.imencode(".jpg", f[:, :, ::-1])[1].tobytes() for f in frames]
    release = threading.Event()
    connections = []

    class Camera(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            connections.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            first = len(connections) == 1
            try:
                for i, jpg in enumerate(jpegs):
                    if first and i == 5:
                        release.wait(30)  # the camera hangs: the connection stays open, no byte comes
                        return
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                    self.wfile.write(head + jpg + b"\r\n")
                    self.wfile.flush()
                release.wait(30)  # then holds on, so the test decides when the stream ends
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    got = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"
        with open_stream(url, live=False, stall_s=1.0, reconnect_delays_s=(0.1, 1.0)) as stream:
            for frame in stream:
                got.append((frame, stream.reconnects, time.monotonic()))
                if len(got) == 5 + len(jpegs):
                    break
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert len(connections) == 2
    assert [r for _, r, _ in got] == [0] * 5 + [1] * len(jpegs)
    gap = got[5][2] - got[4][2]
    assert 0.9 < gap < 15, gap  # noticed after about stall_s, not never
    # after the reopen the camera's frames come again from its first one, JPEG noise only
    assert np.abs(got[5][0].image_rgb.astype(int) - frames[0]).mean() < 4
