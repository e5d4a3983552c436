"""A failing metrics hook or a broken batch never leaves requests unanswered or kills the worker."""
from teacher_server.batcher import DynamicBatcher


def _raising_hook(size: int, seconds: float) -> None:
    raise RuntimeError("metrics backend is down")


def test_a_raising_metrics_hook_still_answers_every_request():
    batcher = DynamicBatcher(lambda payloads: [p * 2 for p in payloads], max_batch=1, max_queue_per_camera=8,
                             on_batch=_raising_hook).start()
    try:
        jobs = [batcher.submit("cam0", i) for i in range(5)]
        assert [job.future.result(timeout=10) for job in jobs] == [0, 2, 4, 6, 8]
        assert batcher._thread.is_alive()
        assert batcher.stats.computed == 5
    finally:
        batcher.stop(grace=1.0)


def test_a_raising_hook_on_the_one_by_one_path_still_answers():
    # A batch fails as a whole, so its frames are retried alone: that path calls the hook too.
    def process(payloads):
        if len(payloads) > 1:
            raise ValueError("batch too large for this model")
        return [p + 1 for p in payloads]

    batcher = DynamicBatcher(process, max_batch=4, max_delay_s=0.5, on_batch=_raising_hook)
    batcher.start()
    try:
        jobs = [batcher.submit(f"cam{i}", i) for i in range(3)]
        assert sorted(job.future.result(timeout=10) for job in jobs) == [1, 2, 3]
        after = batcher.submit("cam0", 10)
        assert after.future.result(timeout=10) == 11
        assert batcher._thread.is_alive()
    finally:
        batcher.stop(grace=1.0)
