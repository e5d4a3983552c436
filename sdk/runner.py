"""Drive a Session over a stream: overlay video, per-frame JSONL log, progress, summary.

Shared by `jitnet run` and `jitnet demo` so both report the same numbers.
"""
from __future__ import annotations

import logging
import signal
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from sdk.session import Session

log = logging.getLogger(__name__)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C does, so state is saved on the way out."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stream(
    session: Session,
    source: Any,
    *,
    out_video: Optional[Path] = None,
    log_path: Optional[Path] = None,
    live: Optional[bool] = None,
    max_frames: Optional[int] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment ``source`` and return the run's summary (see :func:`summarize`)."""
    from sdk.overlay import OverlayWriter, overlay
    from sdk.results import JsonlLog

    names = session.trainer.manifest.class_names[1:]
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    interrupted = False
    with ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        writer = jsonl = bar = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            jsonl = stack.enter_context(JsonlLog(log_path))
        frames_iter = session.segment(source, live=live, max_frames=max_frames)
        stack.callback(frames_iter.close)
        try:
            for i, r in enumerate(frames_iter):
                if writer is None and out_video is not None:
                    out_video.parent.mkdir(parents=True, exist_ok=True)
                    writer = stack.enter_context(OverlayWriter(out_video, fps=session.stream_info.get("fps") or 10.0))
                if bar is None and progress:
                    from tqdm import tqdm

                    bar = stack.enter_context(tqdm(total=session.stream_info.get("frame_count") if max_frames is None
                                                   else max_frames, unit="frame", dynamic_ncols=True))
                record = r.to_dict()
                results.append(record)
                if jsonl is not None:
                    jsonl.write(record)
                if writer is not None:
                    writer.write(overlay(r.image, r.labels, class_names=names))
                if bar is not None:
                    teacher = sum(x["teacher_labelled"] for x in results)
                    bar.update(1)
                    bar.set_postfix(fps=f"{(i + 1) / (time.perf_counter() - start):.1f}",
                                    teacher=f"{100 * teacher / (i + 1):.1f}%", stride=r.stride, state=r.teacher_state)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: saving state and closing outputs")
    summary = summarize(results, time.perf_counter() - start, session)
    summary["interrupted"] = interrupted
    if out_video is not None and writer is not None:
        summary["overlay_video"] = str(writer.path)
    if log_path is not None:
        summary["log"] = str(log_path)
    return summary


def summarize(results: list[dict[str, Any]], seconds: float, session: Session) -> dict[str, Any]:
    """Mean IoU against the teacher (before the student trained on each teacher frame),
    teacher %, frames/s, and cost relative to running the teacher on every frame."""
    n = len(results)
    labelled = [r for r in results if r["teacher_labelled"]]
    before = [r["accuracy_before"] for r in labelled[1:] if r["accuracy_before"] is not None]
    after = [r["accuracy_after"] for r in results if r["accuracy_after"] is not None]
    teacher_ms = [r["timings"]["teacher_ms"] for r in labelled if r["timings"]["teacher_ms"] > 0]
    infer_ms = float(np.median([r["timings"]["infer_ms"] for r in results])) if n else 0.0
    train_ms_total = float(sum(r["timings"]["train_ms"] for r in results))
    updates = int(sum(r["updates"] for r in results))
    t_ms = float(np.median(teacher_ms)) if teacher_ms else float("nan")
    agent_cost = n * infer_ms + len(labelled) * t_ms + train_ms_total
    return {
        "frames": n,
        "seconds": round(seconds, 2),
        "fps": round(n / seconds, 2) if seconds > 0 else None,
        "teacher_frames": len(labelled),
        "teacher_percent": round(100.0 * len(labelled) / n, 2) if n else 0.0,
        "updates": updates,
        # The first teacher frame is excluded: before it the student has seen nothing.
        "mean_iou_vs_teacher": round(float(np.mean(before)), 4) if before else None,
        "mean_iou_after_training": round(float(np.mean(after)), 4) if after else None,
        "teacher_ms_per_frame": round(t_ms, 1),
        "student_infer_ms": round(infer_ms, 1),
        "train_ms_total": round(train_ms_total, 1),
        "cost_vs_teacher_every_frame": round(agent_cost / (n * t_ms), 4) if n and teacher_ms else None,
        "speedup_vs_teacher_every_frame": round((n * t_ms) / agent_cost, 2) if n and teacher_ms and agent_cost else None,
        "final_stride": results[-1]["stride"] if results else None,
        "teacher": session.teacher_info,
    }
