"""The plain objects behind the server: groups, label rule, codecs, tokens, batching. No gRPC, no model."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from teacher_server.auth import TokenAuth, bearer_token, load_tokens
from teacher_server.batcher import DeadlineExpired, DynamicBatcher, FairQueue, Job, QueueFull, ShuttingDown
from teacher_server.codec import FrameError, decode_encoded, decode_label_map, decode_raw, encode_label_map
from core.groups import COCO_CLASSES, GroupError, resolve_groups
from teacher_server.semantic import Detections, instances_to_label_map


# -- class groups ----------------------------------------------------------------------------
def test_paper_groups_merge_the_right_coco_classes() -> None:
    spec = resolve_groups(["person", "auto", "bike"])
    assert spec.classes == (("person",), ("car", "truck", "bus"), ("bicycle", "motorcycle"))
    assert spec.class_to_index() == {"person": 1, "car": 2, "truck": 2, "bus": 2, "bicycle": 3, "motorcycle": 3}


def test_every_coco_class_is_a_group_and_spellings_are_forgiven() -> None:
    assert len(COCO_CLASSES) == 80
    for name in COCO_CLASSES:
        assert resolve_groups([name]).classes == ((name,),)
    assert resolve_groups(["traffic_light"]).classes == (("traffic light",),)
    assert "dog" in resolve_groups(["animal"]).classes[0]


@pytest.mark.parametrize(
    "groups, message",
    [([], "no class groups"), (["unicorn"], "unknown class group"), (["dog", "dog"], "twice"), (["auto", "car"], "in both")],
)
def test_bad_group_lists_are_refused_with_a_reason(groups, message) -> None:
    with pytest.raises(GroupError, match=message):
        resolve_groups(groups)


# -- instances -> label map ---------------------------------------------------------------------
def _box_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_label_map_keeps_confident_requested_instances_and_merges_groups() -> None:
    h, w = 20, 30
    det = Detections(
        boxes=np.array([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [0, 10, 10, 20]], np.float32),
        scores=np.array([0.9, 0.8, 0.4, 0.95], np.float32),
        class_names=["car", "truck", "person", "dog"],
        masks=np.stack([_box_mask(h, w, 0, 0, 10, 10), _box_mask(h, w, 10, 0, 20, 10), _box_mask(h, w, 20, 0, 30, 10), _box_mask(h, w, 0, 10, 10, 20)]),
    )
    label_map, inst = instances_to_label_map(det, resolve_groups(["person", "auto"]), (h, w), 0.5)
    assert label_map.dtype == np.uint8 and label_map.shape == (h, w)
    assert (label_map[0:10, 0:20] == 2).all()  # car and truck are both "auto"
    assert (label_map[0:10, 20:30] == 0).all()  # person below the threshold
    assert (label_map[10:20] == 0).all()  # dog not requested
    assert [(i.class_name, i.group, i.group_index) for i in inst] == [("car", "auto", 2), ("truck", "auto", 2)]


def test_overlapping_masks_go_to_the_higher_score_whatever_the_order() -> None:
    h, w = 10, 10
    a, b = _box_mask(h, w, 0, 0, 6, 6), _box_mask(h, w, 4, 4, 10, 10)
    spec = resolve_groups(["person", "dog"])
    for order in ([0, 1], [1, 0]):
        scores = np.array([0.6, 0.9], np.float32)[order]
        det = Detections(
            boxes=np.zeros((2, 4), np.float32),
            scores=scores,
            class_names=[["person", "dog"][i] for i in order],
            masks=np.stack([[a, b][i] for i in order]),
        )
        label_map, _ = instances_to_label_map(det, spec, (h, w))
        assert label_map[5, 5] == 2 and label_map[0, 0] == 1 and label_map[9, 9] == 2
    tie = Detections(np.zeros((2, 4), np.float32), np.array([0.7, 0.7], np.float32), ["dog", "person"], np.stack([a, a]))
    assert instances_to_label_map(tie, spec, (h, w))[0][0, 0] == 1  # equal scores: lower group index


# -- codecs ---------------------------------------------------------------------------------------
def _jpeg(h=48, w=64) -> bytes:
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_jpeg_and_png_decode_to_rgb() -> None:
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 200  # red
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert (decode_encoded(png) == rgb).all()
    assert decode_encoded(_jpeg()).shape == (48, 64, 3)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty frame"),
        (b"GIF89a....", "neither JPEG nor PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "corrupt JPEG"),
        (_jpeg()[: len(_jpeg()) // 2], "truncated JPEG|corrupt JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, "corrupt PNG"),
    ],
)
def test_bad_encoded_frames_are_refused(data, message) -> None:
    with pytest.raises(FrameError, match=message):
        decode_encoded(data)


def test_raw_frames_must_match_their_shape() -> None:
    assert decode_raw(bytes(2 * 3 * 3), 2, 3, 3).shape == (2, 3, 3)
    with pytest.raises(FrameError, match="bytes but 2x3x3"):
        decode_raw(bytes(17), 2, 3, 3)
    with pytest.raises(FrameError, match="empty frame"):
        decode_raw(b"", 0, 3, 3)
    with pytest.raises(FrameError, match="channels=3"):
        decode_raw(bytes(6), 2, 3, 1)
    with pytest.raises(FrameError, match="at most"):
        decode_raw(bytes(300), 10, 10, 3, max_pixels=50)


def test_label_map_png_round_trips() -> None:
    label_map = np.random.default_rng(1).integers(0, 4, (37, 51)).astype(np.uint8)
    assert (decode_label_map(encode_label_map(label_map)) == label_map).all()


# -- tokens -----------------------------------------------------------------------------------------
def test_tokens_file_and_bearer_check(tmp_path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("# camera token\ncam0 secret-zero-123\ncam1   secret-one-456\n")
    auth = TokenAuth(load_tokens(path))
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert auth.allows((("authorization", "Bearer secret-zero-123"),), "cam0")
    assert not auth.allows((("authorization", "Bearer secret-zero-123"),), "cam1")  # another camera's token
    assert not auth.allows((("authorization", "Bearer nope"),), "cam0")
    assert not auth.allows((), "cam0")
    assert auth.allows((("authorization", "Bearer secret-one-456"),), None)
    (tmp_path / "short.txt").write_text("cam0 abc\n")
    with pytest.raises(ValueError, match="shorter than 8"):
        load_tokens(tmp_path / "short.txt")


# -- fair queue and batcher ---------------------------------------------------------------------------
def test_fair_queue_serves_cameras_round_robin() -> None:
    q = FairQueue(max_total=100, max_per_camera=100)
    for i in range(6):
        q.put(Job("flood", i, None))
    q.put(Job("quiet", "q", None))
    batch, _ = q.pop_batch(3, time.monotonic())
    assert [j.payload for j in batch] == [0, "q", 1]


def test_full_queue_pushes_out_the_busiest_camera_not_a_newcomer() -> None:
    q = FairQueue(max_total=4, max_per_camera=4)
    flood = [Job("flood", i, None) for i in range(4)]
    for job in flood:
        q.put(job)
    evicted = q.put(Job("quiet", "q", None))
    assert evicted is flood[-1]
    with pytest.raises(QueueFull):
        q.put(Job("flood", 99, None))  # flood already holds its share
    q2 = FairQueue(10, 1)
    q2.put(Job("a", 1, None))
    with pytest.raises(QueueFull, match="already has"):
        q2.put(Job("a", 2, None))


class _Recorder:
    """A process function that records the batches it sees (stands in for the model)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list] = []
        self.delay_s = delay_s

    def __call__(self, payloads):
        self.batches.append(list(payloads))
        time.sleep(self.delay_s)
        return [p * 10 for p in payloads]


def test_concurrent_jobs_are_computed_together_up_to_max_batch() -> None:
    rec = _Recorder(delay_s=0.05)
    batcher = DynamicBatcher(rec, max_batch=4, max_delay_s=0.2, max_queue=32, max_queue_per_camera=32).start()
    try:
        jobs = [batcher.submit(f"cam{i}", i) for i in range(10)]
        assert [j.future.result(timeout=5) for j in jobs] == [i * 10 for i in range(10)]
    finally:
        batcher.stop()
    assert max(len(b) for b in rec.batches) == 4
    assert batcher.stats.computed == 10 and batcher.stats.mean_batch > 2


def test_batching_off_computes_one_at_a_time() -> None:
    rec = _Recorder()
    batcher = DynamicBatcher(rec, max_batch=1, max_delay_s=0.0, max_queue=32, max_queue_per_camera=32).start()
    try:
        jobs = [batcher.submit("cam", i) for i in range(5)]
        [j.future.result(timeout=5) for j in jobs]
    finally:
        batcher.stop()
    assert all(len(b) == 1 for b in rec.batches)


def test_expired_jobs_are_not_computed() -> None:
    rec = _Recorder(delay_s=0.3)
    batcher = DynamicBatcher(rec, max_batch=1, max_delay_s=0.0, max_queue=32, max_queue_per_camera=32).start()
    try:
        first = batcher.submit("a", 1)
        time.sleep(0.05)  # the worker is now busy with `first`
        late = batcher.submit("b", 2, deadline=time.monotonic() + 0.05)
        assert first.future.result(timeout=5) == 10
        with pytest.raises(DeadlineExpired):
            late.future.result(timeout=5)
    finally:
        batcher.stop()
    assert [p for b in rec.batches for p in b] == [1]
    assert batcher.stats.expired == 1


def test_a_fast_camera_does_not_starve_the_others() -> None:
    rec = _Recorder(delay_s=0.02)
    batcher = DynamicBatcher(rec, max_batch=2, max_delay_s=0.0, max_queue=64, max_queue_per_camera=64).start()
    try:
        flood = [batcher.submit("flood", i) for i in range(20)]
        quiet = [batcher.submit(f"quiet{i}", 100 + i) for i in range(3)]
        for job in quiet + flood:
            job.future.result(timeout=10)
    finally:
        batcher.stop()
    order = [p for b in rec.batches for p in b]
    # Every quiet camera is served within the first few batches, not after the 20 flood frames.
    assert max(order.index(100 + i) for i in range(3)) <= 7, order


def test_full_queue_raises_with_a_retry_hint_and_memory_stays_bounded() -> None:
    rec = _Recorder(delay_s=0.2)
    batcher = DynamicBatcher(rec, max_batch=1, max_delay_s=0.0, max_queue=3, max_queue_per_camera=3).start()
    try:
        accepted, rejected = [], []
        for i in range(10):
            try:
                accepted.append(batcher.submit(f"cam{i % 2}", i))
            except QueueFull as exc:
                rejected.append(exc)
        assert rejected and all(e.retry_after_s > 0 for e in rejected)
        assert batcher.queue_depth() <= 3
    finally:
        batcher.stop()


def test_stop_finishes_queued_work_then_refuses_new_jobs() -> None:
    rec = _Recorder(delay_s=0.05)
    batcher = DynamicBatcher(rec, max_batch=2, max_delay_s=0.0, max_queue=16, max_queue_per_camera=16).start()
    jobs = [batcher.submit("cam", i) for i in range(6)]
    stopper = threading.Thread(target=batcher.stop, kwargs={"grace": 10})
    stopper.start()
    assert [j.future.result(timeout=10) for j in jobs] == [i * 10 for i in range(6)]
    stopper.join()
    with pytest.raises(ShuttingDown):
        batcher.submit("cam", 7)
