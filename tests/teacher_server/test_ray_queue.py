"""The fleet ingress's queue (ray_queue.FleetQueue) on its own: policy order, shares and admission before decoding.

FleetQueue is the real object; only Serve's handle to the model replicas is
replaced, by `_Replicas`, which records the order frames reach it and answers
when the test says so (the Ray tests in test_ray_engine.py run it behind Serve).
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the fleet extra (ray[serve]) is not installed")

from core.labels import TeacherLabels  # noqa: E402
from teacher_server.jobs import QueueFull  # noqa: E402
from teacher_server.ray_queue import FleetQueue  # noqa: E402


class _Response:
    """What a Serve handle call returns: awaitable, cancellable."""

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future

    def __await__(self):
        return self.future.__await__()

    def cancel(self) -> None:
        self.future.cancel()


class _Replicas:
    """Stands in for Serve's handle: `label.remote(payload)` is a _Response the test answers with `answer()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.arrived: list = []
        self._waiting: list[asyncio.Future] = []
        self._changed = threading.Condition()
        self.label = SimpleNamespace(remote=self._remote)

    def _remote(self, payload: object) -> _Response:
        future = self.loop.create_future()
        with self._changed:
            self.arrived.append(payload)
            self._waiting.append(future)
            self._changed.notify_all()
        return _Response(future)

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.arrived) >= count, timeout), self.arrived
            return list(self.arrived)

    def answer(self) -> None:
        """Answer the oldest frame at the replicas (a batch of one that took 10 ms)."""
        with self._changed:
            future = self._waiting.pop(0)
        result = TeacherLabels(frame_index=0, label_map=np.zeros((2, 2), np.uint8), instances=[], groups=(),
                               model_name="stand-in", model_version="0",
                               timings={"inference_ms": 10.0, "postprocess_ms": 0.0, "batch_size": 1})
        self.loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))


async def _cancel_the_rest() -> None:
    """Frames still at the stand-in replicas when a test ends are cancelled, as Serve would on shutdown."""
    while tasks := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
        for task in tasks:  # each one ended lets a waiting frame go to the replicas: until none is left
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture()
def running():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    replicas = _Replicas(loop)

    def make(**options) -> FleetQueue:
        queue = FleetQueue(replicas, **{"max_batch": 1, "max_queue": 8, "max_per_camera": 3, "slots": 1, **options})
        queue.bind(loop)
        return queue

    try:
        yield make, replicas
    finally:
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_frames_waiting_for_a_replica_slot_go_round_robin_between_cameras(running) -> None:
    make, replicas = running
    queue = make(policy="fair")
    jobs = [queue.submit("a", "a0")]
    replicas.wait_for(1)  # a0 holds the only slot; the rest wait in the ingress
    jobs += [queue.submit("a", p) for p in ("a1", "a2")] + [queue.submit("b", "b0")]
    for n in range(2, 5):
        replicas.answer()
        replicas.wait_for(n)
    replicas.answer()
    assert replicas.arrived == ["a0", "a1", "b0", "a2"]
    assert all(job.future.result(10).model_name == "stand-in" for job in jobs)
    assert queue.queue_depth() == 0


def test_a_camera_over_its_share_is_refused_before_decoding_with_a_hint(running) -> None:
    make, replicas = running
    queue = make(max_per_camera=2)
    queue.submit("a", "a0")
    replicas.wait_for(1)
    for p in ("a1", "a2"):
        queue.precheck("a")
        queue.submit("a", p)
    with pytest.raises(QueueFull) as refused:
        queue.precheck("a")
    assert refused.value.retry_after_s > 0
    assert queue.precheck("b") is False  # another camera still gets in


def test_a_frame_whose_caller_gave_up_while_it_waited_never_reaches_a_replica(running) -> None:
    make, replicas = running
    queue = make()
    queue.submit("a", "a0")
    replicas.wait_for(1)
    gone = queue.submit("b", "b0")
    assert queue.cancel(gone) is True
    with pytest.raises(CancelledError):
        gone.future.result(1)
    replicas.answer()
    kept = queue.submit("b", "b1")
    replicas.wait_for(2)
    replicas.answer()
    assert kept.future.result(10).model_name == "stand-in" and replicas.arrived == ["a0", "b1"]
