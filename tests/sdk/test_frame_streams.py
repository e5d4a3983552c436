"""Frame sources on real video: replay order, live dropping, conversions, errors."""
from __future__ import annotations

import http.server
import threading
import time

import cv2
import numpy as np
import pytest

from conftest import DAVIS_ROOT, load_davis_frame
from sdk.clips import ClipNotFound, find_clip
from sdk.streams import Frame, StreamError, ensure_rgb, open_stream, read_frames


@pytest.fixture(scope="module")
def bikes():
    return find_clip("bikes")


@pytest.fixture(scope="module")
def davis_frames(davis_root):
    return [load_davis_frame("blackswan", i)[0] for i in range(6)]


def cv2_frame(path, index):
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = cap.read()
    cap.release()
    assert ok
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_replay_yields_every_frame_of_a_real_clip_in_order_as_rgb(bikes):
    with open_stream(bikes) as stream:
        assert not stream.live and stream.fps == pytest.approx(25.0)
        frames = list(stream)
    assert len(frames) == 250 == stream.frame_count
    assert [f.index for f in frames] == list(range(250))
    assert frames[100].timestamp_s == pytest.approx(100 / 25)
    assert all(f.image_rgb.shape == (272, 640, 3) and f.image_rgb.dtype == np.uint8 for f in frames[:5])
    assert stream.stats.as_dict() == {"read": 250, "delivered": 250, "dropped": 0, "skipped": 0}
    # RGB, not OpenCV's BGR, and the right frame
    assert np.array_equal(frames[0].image_rgb, cv2_frame(bikes, 0))
    assert frames[0].image_rgb.flags.c_contiguous


def test_vtest_street_clip_replays_when_fetched():
    try:
        path = find_clip("vtest")
    except ClipNotFound as exc:
        pytest.skip(str(exc))
    with open_stream(path, max_frames=20) as stream:
        frames = list(stream)
    assert len(frames) == 20 and stream.fps == pytest.approx(10.0)
    assert frames[0].image_rgb.shape == (576, 768, 3)
    assert frames[19].timestamp_s == pytest.approx(1.9)
    assert not np.array_equal(frames[0].image_rgb, frames[19].image_rgb)  # pedestrians move


def test_max_frames_and_resize(bikes):
    assert len(read_frames(bikes, max_frames=7)) == 7
    half = read_frames(bikes, max_frames=1, resize=0.5)[0]
    assert half.shape == (136, 320, 3)
    fixed = read_frames(bikes, max_frames=1, resize=(160, 120))[0]
    assert fixed.shape == (120, 160, 3)
    with pytest.raises(ValueError, match="resize"):
        open_stream(bikes, resize=(0, 10))
    with pytest.raises(ValueError, match="max_frames"):
        open_stream(bikes, max_frames=-1)


def test_live_file_drops_frames_for_a_slow_consumer_instead_of_lagging(bikes):
    consumed: list[Frame] = []
    ages = []
    with open_stream(bikes, live=True) as stream:
        start = time.monotonic()
        for frame in stream:
            ages.append(time.monotonic() - frame.captured_at)
            consumed.append(frame)
            time.sleep(0.15)  # ~4 frame periods at 25 fps
            if len(consumed) == 8:
                break
        elapsed = time.monotonic() - start
        thread = stream._thread
    assert not thread.is_alive()  # closing stopped the reader
    indices = [f.index for f in consumed]
    assert indices == sorted(set(indices)) and indices[0] == 0
    assert max(np.diff(indices)) >= 2  # frames were skipped
    assert stream.stats.dropped > 0
    assert stream.stats.read >= stream.stats.delivered + stream.stats.dropped
    # played at the file's rate, not as fast as it decodes
    assert stream.stats.read <= 25 * elapsed + 3
    # the consumer always got a fresh frame: no queue built up behind it
    assert max(ages) < 0.5


def test_live_network_stream_over_http_mjpeg_is_live_by_default(bikes):
    frames = read_frames(bikes, max_frames=30)
    jpegs = [cv2.imencode(".jpg", f[:, :, ::-1])[1].tobytes() for f in frames]

    class MjpegCamera(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for jpg in jpegs:
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                    self.wfile.write(head + jpg + b"\r\n")
                    time.sleep(0.04)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MjpegCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"
        got = []
        # reconnect=False: this camera sends 30 frames and hangs up, which a reconnecting source would retry.
        with open_stream(url, reconnect=False) as stream:
            assert stream.live
            for frame in stream:
                got.append(frame)
                time.sleep(0.12)
    finally:
        server.shutdown()
        server.server_close()
    assert stream.stats.dropped > 0 and stream.stats.read == 30
    last = got[-1]
    assert last.image_rgb.shape == (272, 640, 3)
    # the frame delivered as index k is the camera's k-th frame (JPEG noise only)
    assert np.abs(last.image_rgb.astype(int) - frames[last.index]).mean() < 4
    assert last.timestamp_s > got[0].timestamp_s


def test_davis_frames_as_an_iterable_replay_unchanged(davis_frames):
    with open_stream(iter(davis_frames), fps=24) as stream:
        got = list(stream)
    assert len(got) == len(davis_frames)
    assert all(np.array_equal(g.image_rgb, f) for g, f in zip(got, davis_frames))
    assert got[3].timestamp_s == pytest.approx(3 / 24)


def test_image_folder_source_reads_sorted_davis_jpegs():
    load_davis_frame("blackswan", 0)  # skips without ../shared/data
    with open_stream(DAVIS_ROOT / "JPEGImages" / "blackswan", max_frames=3) as stream:
        got = list(stream)
    assert [g.index for g in got] == [0, 1, 2]
    for g in got:
        assert np.array_equal(g.image_rgb, load_davis_frame("blackswan", g.index)[0])


def test_grayscale_and_rgba_frames_are_converted(davis_frames):
    gray = cv2.cvtColor(davis_frames[0], cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([davis_frames[1], np.full(gray.shape, 255, np.uint8)])
    got = read_frames([gray, gray[:, :, None], rgba])
    assert all(g.shape == (480, 854, 3) for g in got)
    assert np.array_equal(got[0][:, :, 0], gray) and np.array_equal(got[0][:, :, 2], gray)
    assert np.array_equal(got[2], davis_frames[1])


@pytest.mark.parametrize("bad, match", [
    (np.zeros((48, 64, 3), np.float32), "uint8"),
    (np.zeros((48, 64, 2), np.uint8), "not an image"),
    (np.zeros((0, 64, 3), np.uint8), "empty"),
    ("not a frame", "numpy array"),
])
def test_unusable_frames_raise_naming_the_frame(davis_frames, bad, match):
    with open_stream([davis_frames[0], bad]) as stream:
        it = iter(stream)
        assert next(it).index == 0
        with pytest.raises(StreamError, match=match) as info:
            next(it)
    assert "frame 1" in str(info.value)


def test_live_mode_raises_reader_errors_in_the_consumer(davis_frames):
    with open_stream([davis_frames[0], np.zeros((4, 4), np.int16)], live=True, fps=200, buffer_size=4) as stream:
        with pytest.raises(StreamError, match="uint8"):
            list(stream)


def test_missing_file_says_check_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_stream(tmp_path / "nope.mp4")


def test_corrupt_file_says_it_is_not_a_readable_video(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(StreamError, match="could not open video file"):
        open_stream(bad)


def test_truncated_real_clip_is_refused(bikes, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(bikes.read_bytes()[: bikes.stat().st_size // 2])
    with pytest.raises(StreamError, match="ffprobe|re-encode"):
        open_stream(cut)


def test_missing_camera_says_what_to_check():
    with pytest.raises(StreamError, match=r"/dev/video57"):
        open_stream("57")


def test_unreachable_url_says_what_to_check_and_hides_password():
    with pytest.raises(StreamError, match="check the URL") as info:
        open_stream("rtsp://admin:secret@127.0.0.1:1/stream", open_timeout_s=2)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("source", [object(), np.zeros((4, 4, 3), np.uint8), True])
def test_unsupported_source_types_raise_type_error(source):
    with pytest.raises(TypeError):
        open_stream(source)


def test_closed_stream_cannot_be_iterated(bikes):
    with open_stream(bikes) as stream:
        next(iter(stream))
    with pytest.raises(StreamError, match="closed"):
        iter(stream)


def test_ensure_rgb_converts_bgr_input():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    assert ensure_rgb(bgr, source_is_bgr=True)[0, 0].tolist() == [0, 0, 255]
