"""The teacher-label cache: a second run never recomputes, and damage is detected and repaired."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import load_davis_frame

from evaluation import label_cache as lc
from evaluation.flow import FlowBaselineStats, iter_flow_baseline
from evaluation.label_cache import CacheKey, LabelCache, video_identity

GROUPS = [["person"], ["car", "bus", "truck"]]


def real_labels(i: int) -> np.ndarray:
    """A real label map: the DAVIS car as class group 2."""
    return load_davis_frame("car-shadow", i)[1].astype(np.uint8) * 2


@pytest.fixture
def key(davis_root) -> CacheKey:
    return CacheKey.for_video(davis_root / "JPEGImages" / "car-shadow", "maskrcnn_resnet50_fpn", "v2", GROUPS, 0.5)


def test_second_run_reads_instead_of_computing(tmp_path, key):
    calls: list[int] = []

    def compute(i: int) -> np.ndarray:
        calls.append(i)
        return real_labels(i)

    first = [LabelCache(tmp_path).get_or_compute(key, i, compute) for i in range(4)]
    assert calls == [0, 1, 2, 3]
    cache = LabelCache(tmp_path)  # a new process, same folder
    second = [cache.get_or_compute(key, i, compute) for i in range(4)]
    assert calls == [0, 1, 2, 3] and cache.hits == 4 and cache.misses == 0
    for a, b in zip(first, second):
        assert b.dtype == np.uint8 and np.array_equal(a, b)
    assert cache.cached_indices(key) == [0, 1, 2, 3]
    manifest = cache.manifest(key)
    assert manifest["key"]["teacher"] == "maskrcnn_resnet50_fpn"
    assert manifest["key"]["class_groups"] == [["person"], ["bus", "car", "truck"]]
    seconds = cache.recorded_seconds(key)
    assert sorted(seconds) == [0, 1, 2, 3] and all(s > 0 for s in seconds.values())


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "garbage", "empty"])
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, key, damage):
    cache = LabelCache(tmp_path)
    cache.get_or_compute(key, 5, real_labels)
    path = cache.frame_path(key, 5)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_bytes":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        path.write_bytes(b"")
    calls: list[int] = []
    fresh = LabelCache(tmp_path)
    labels = fresh.get_or_compute(key, 5, lambda i: calls.append(i) or real_labels(i))
    assert calls == [5] and fresh.corrupt == 1
    assert np.array_equal(labels, real_labels(5))
    assert fresh.get(key, 5) is not None  # repaired on disk


def test_a_write_killed_midway_leaves_no_entry(tmp_path, key, monkeypatch):
    cache = LabelCache(tmp_path)

    def dies_midway(fh, **arrays):
        fh.write(b"PK\x03\x04 half of a zip")
        raise KeyboardInterrupt  # the run is killed while writing

    monkeypatch.setattr(lc.np, "savez_compressed", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(key, 0, real_labels)
    monkeypatch.undo()
    assert cache.get(key, 0) is None and cache.cached_indices(key) == []
    assert not list(cache.entry_dir(key).glob("*.tmp"))


def test_bulk_computes_only_missing_frames_in_batches(tmp_path, key):
    cache = LabelCache(tmp_path)
    cache.get_or_compute(key, 2, real_labels)
    batches: list[list[int]] = []

    def teacher_batch(indices):
        batches.append(list(indices))
        return [real_labels(i) for i in indices]

    out = cache.get_or_compute_many(key, range(6), teacher_batch, batch_size=2)
    assert batches == [[0, 1], [3, 4], [5]]
    assert sorted(out) == list(range(6)) and np.array_equal(out[4], real_labels(4))
    assert cache.get_or_compute_many(key, range(6), teacher_batch) and len(batches) == 3
    with pytest.raises(ValueError, match="returned 1 label maps for 2"):
        cache.get_or_compute_many(key, [10, 11], lambda idx: [real_labels(0)])


def test_key_changes_exactly_when_the_labels_would(davis_root, tmp_path):
    video = davis_root / "JPEGImages" / "car-shadow"
    base = CacheKey.for_video(video, "maskrcnn", "v2", GROUPS, 0.5)
    same = CacheKey.for_video(video, "maskrcnn", "v2", [["person"], ["truck", "car", "bus"]], 0.5)
    assert base.digest() == same.digest()  # order inside a group does not change labels
    for other in (
        CacheKey.for_video(video, "maskrcnn", "v2", list(reversed(GROUPS)), 0.5),  # label ids swap
        CacheKey.for_video(video, "maskrcnn", "v2", GROUPS, 0.7),
        CacheKey.for_video(video, "maskrcnn", "v3", GROUPS, 0.5),
        CacheKey.for_video(video, "yolov7-seg", "v2", GROUPS, 0.5),
        CacheKey.for_video(davis_root / "JPEGImages" / "dog", "maskrcnn", "v2", GROUPS, 0.5),
    ):
        assert other.digest() != base.digest()


def test_video_identity_follows_content_not_location(tmp_path, davis_root):
    src = davis_root / "JPEGImages" / "blackswan" / "00000.jpg"
    a, b = tmp_path / "a.jpg", tmp_path / "moved" / "b.jpg"
    b.parent.mkdir()
    shutil.copy(src, a)
    shutil.copy(src, b)
    assert video_identity(a) == video_identity(b)
    assert video_identity(a, mode="stat") != video_identity(b, mode="stat")
    data = bytearray(a.read_bytes())
    data[100] ^= 0xFF
    a.write_bytes(bytes(data))
    assert video_identity(a) != video_identity(b)
    with pytest.raises(FileNotFoundError, match="live streams"):
        video_identity(tmp_path / "rtsp-camera")


def test_cached_teacher_makes_a_baseline_rerun_teacher_free(tmp_path, davis_root, key):
    from evaluation.davis_data import load_sequence

    frames, masks = load_sequence(davis_root, "car-shadow")
    frames = frames[:9]
    calls: list[int] = []

    def teacher(i, frame):
        calls.append(i)
        return masks[i].astype(np.uint8)

    runs = []
    for _ in range(2):
        stats = FlowBaselineStats("dis_ultrafast", 4)
        labels = list(iter_flow_baseline(frames, LabelCache(tmp_path).wrap(key, teacher), 4, "dis_ultrafast",
                                         stats=stats))
        runs.append((labels, stats))
    (first, first_stats), (second, second_stats) = runs
    assert calls == [0, 4, 8] and first_stats.teacher_calls == second_stats.teacher_calls == 3
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_rejects_labels_that_are_not_uint8_maps(tmp_path, key):
    with pytest.raises(ValueError, match="uint8"):
        LabelCache(tmp_path).put(key, 0, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        LabelCache(tmp_path).put(key, 0, np.zeros((4, 4, 3), np.uint8))
