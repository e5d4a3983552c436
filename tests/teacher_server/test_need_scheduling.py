"""The `need` queue policy on scripted queues, the batcher choosing it, and the need signal on the wire."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from core.need import NeedSignal
from protos import teacher_pb2
from teacher_server.batcher import DynamicBatcher, FairQueue, Job
from teacher_server.scheduling import NeedQueue, make_queue, need_from_request


def _job(camera: str, at: float, accuracy=None, *, threshold: float = 0.8, stride: int = 8, since: int = 8,
         need: bool = True) -> Job:
    signal = NeedSignal(accuracy, threshold, failed=accuracy is not None and accuracy < threshold,
                        stride=stride, frames_since_teacher=since) if need else None
    return Job(camera_id=camera, payload=camera, deadline=None, enqueued_at=at, need=signal)


def _order(queue, now: float, n: int = 100) -> list[str]:
    batch, expired = queue.pop_batch(n, now)
    assert not expired
    return [j.camera_id for j in batch]


def test_the_camera_furthest_below_its_threshold_goes_first():
    q = NeedQueue(64, 16, max_wait_s=10.0)
    q.put(_job("static", 0.0, 0.95))                 # above its threshold
    q.put(_job("handheld", 0.1, 0.30))               # 0.5 below
    q.put(_job("street", 0.2, 0.70))                 # 0.1 below
    q.put(_job("strict", 0.3, 0.70, threshold=0.9))  # 0.2 below: the deficit counts, not the raw accuracy
    q.put(_job("new", 0.4, None))                    # no teacher frame yet: failing outright (0.8 below)
    assert _order(q, now=1.0) == ["new", "handheld", "strict", "street", "static"]
    assert len(q) == 0


def test_fair_queue_serves_the_same_requests_in_arrival_turns():
    q = FairQueue(64, 16)
    for camera, at, acc in (("static", 0.0, 0.95), ("handheld", 0.1, 0.3), ("street", 0.2, 0.7)):
        q.put(_job(camera, at, acc))
    assert _order(q, now=1.0) == ["static", "handheld", "street"]


def test_aging_bound_a_satisfied_camera_never_waits_longer_than_max_wait():
    """Needy cameras keep arriving; the satisfied one is served once it has waited max_wait_s."""
    q = NeedQueue(64, 16, max_wait_s=2.0)
    q.put(_job("static", 0.0, 0.99))
    served: dict[str, float] = {}
    now = 0.0
    for step in range(40):  # one teacher frame per 0.25 s, two needy requests arriving per frame
        q.put(_job(f"needy{step}a", now, 0.1))
        q.put(_job(f"needy{step}b", now, 0.2))
        now += 0.25
        (job,), _ = q.pop_batch(1, now)
        served[job.camera_id] = now
        if job.camera_id == "static":
            break
    assert "static" in served
    assert served["static"] == pytest.approx(2.0)  # the first pop at or past the bound
    assert served["static"] - 0.0 <= 2.0 + 0.25


def test_a_flooding_camera_is_held_to_its_share():
    """A camera sending every frame with stride 16 (and the worst accuracy) gets one turn, then waits its turn."""
    q = NeedQueue(64, 16, max_wait_s=100.0)
    for k in range(6):
        q.put(_job("flood", 0.01 * k, 0.05, stride=16, since=16 if k == 0 else k))
    q.put(_job("a", 0.1, 0.6))
    q.put(_job("b", 0.2, 0.5))
    order = _order(q, now=1.0)
    assert order[:3] == ["flood", "b", "a"]
    assert order[3:] == ["flood"] * 5
    assert NeedQueue.early(_job("x", 0, 0.5, stride=16, since=3))
    assert not NeedQueue.early(_job("x", 0, 0.5, stride=16, since=16))
    assert not NeedQueue.early(_job("x", 0, 0.5, stride=16, since=8))  # Algorithm 1 right after doubling 8 -> 16
    assert not NeedQueue.early(_job("x", 0, need=False))


def test_old_agents_without_the_need_field_rank_as_average_need():
    q = NeedQueue(64, 16, max_wait_s=100.0)
    q.put(_job("old", 0.0, need=False))
    q.put(_job("low", 0.1, 0.75))    # 0.05 below
    q.put(_job("high", 0.2, 0.25))   # 0.55 below; average deficit 0.30
    assert _order(q, now=1.0) == ["high", "old", "low"]
    q.put(_job("old", 2.0, need=False))
    assert _order(q, now=3.0) == ["old"]  # alone, it is simply served


def test_stretch_hint_when_the_wait_is_a_large_part_of_the_cameras_interval():
    q = NeedQueue(64, 16, max_wait_s=100.0, max_stretch=4.0)
    q.put(_job("cam", 0.0, 0.9))
    (first,), _ = q.pop_batch(1, 0.05)
    assert first.stride_stretch == 1.0           # no interval known yet
    q.put(_job("cam", 1.0, 0.9))                  # the camera asks every second
    (quick,), _ = q.pop_batch(1, 1.05)
    assert quick.stride_stretch == 1.0           # a 50 ms wait is nothing next to 1 s
    q.put(_job("cam", 2.0, 0.9))
    (slow,), _ = q.pop_batch(1, 2.5)
    assert slow.stride_stretch == pytest.approx(1.5)
    q.put(_job("cam", 3.0, 0.9))
    (very,), _ = q.pop_batch(1, 30.0)
    assert very.stride_stretch == 4.0            # capped
    q.put(_job("cam", 31.0, 0.3))
    (failing,), _ = q.pop_batch(1, 40.0)
    assert failing.stride_stretch == 1.0         # a student below its threshold is never asked to wait longer


def test_expired_and_cancelled_jobs_are_dropped_not_served():
    q = NeedQueue(64, 16)
    late = _job("late", 0.0, 0.1)
    late.deadline = 0.5
    gone = _job("gone", 0.0, 0.1)
    gone.future.cancel()
    q.put(late)
    q.put(gone)
    q.put(_job("ok", 0.0, 0.9))
    batch, expired = q.pop_batch(8, now=1.0)
    assert [j.camera_id for j in batch] == ["ok"] and expired == [late] and len(q) == 0


def test_make_queue_names_the_policies():
    assert type(make_queue("fair", 8, 2)) is FairQueue
    assert type(make_queue("need", 8, 2)) is NeedQueue
    with pytest.raises(ValueError, match="fair, need"):
        make_queue("fifo", 8, 2)


def test_batcher_with_the_need_policy_computes_a_batch_in_need_order():
    """Eight requests queued before the batch starts: the model sees them neediest first."""
    seen: list[list[str]] = []
    done = threading.Event()

    def process(payloads):
        seen.append(list(payloads))
        done.set()
        return payloads

    batcher = DynamicBatcher(process, max_batch=8, max_delay_s=60.0, max_queue=64, max_queue_per_camera=8,
                             policy="need").start()
    try:
        accuracies = [0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2, 0.8]
        jobs = [batcher.submit(f"cam{k}", f"cam{k}", need=NeedSignal(a, 0.8, stride=8, frames_since_teacher=8))
                for k, a in enumerate(accuracies)]
        assert done.wait(30)
        for job in jobs:
            job.future.result(timeout=30)
    finally:
        batcher.stop(5)
    assert seen == [[f"cam{k}" for k in np.argsort(accuracies)]]
    assert batcher.policy == "need"


def test_need_signal_round_trips_the_wire_and_old_requests_have_none():
    from edge_agent.teacher_client import need_message

    old = teacher_pb2.LabelRequest(camera_id="old", frame_index=3, encoded=b"x", groups=["person"])
    assert need_from_request(teacher_pb2.LabelRequest.FromString(old.SerializeToString())) is None
    signal = NeedSignal(0.42, 0.8, failed=True, stride=16, frames_since_teacher=16)
    new = teacher_pb2.LabelRequest(camera_id="new", frame_index=3, encoded=b"x", groups=["person"], need=need_message(signal))
    back = need_from_request(teacher_pb2.LabelRequest.FromString(new.SerializeToString()))
    assert back.accuracy == pytest.approx(0.42) and back.threshold == pytest.approx(0.8)
    assert (back.failed, back.stride, back.frames_since_teacher) == (True, 16, 16)
    first = need_from_request(teacher_pb2.LabelRequest(need=need_message(NeedSignal(None, 0.8))))
    assert first.accuracy is None and first.deficit == pytest.approx(0.8)
