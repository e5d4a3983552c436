"""Drive a Session over a stream: overlay video, per-frame JSONL log, progress, summary.

Shared by `jitnet run` and `jitnet demo` so both report the same numbers.
"""
from __future__ import annotations

import collections
import logging
import signal
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from sdk.session import Session

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """SIGTERM: a supervisor (systemd, Kubernetes, docker stop) asked for a clean stop."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C does, so state is saved on the way out.

    It raises :class:`Terminated` so the caller can tell a requested stop (exit 0,
    which supervisors read as a clean shutdown) from Ctrl-C (exit 130).
    """

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

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
    """Segment ``source`` and return the run's summary (see :meth:`RunTotals.summary`)."""
    from sdk.overlay import OverlayWriter, overlay, result_caption, with_caption
    from sdk.results import JsonlLog

    names = session.trainer.manifest.class_names[1:]
    totals = RunTotals()
    start = time.perf_counter()
    interrupted = terminated = False
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
                totals.add(record)
                if jsonl is not None:
                    jsonl.write(record)
                if writer is not None:
                    writer.write(with_caption(overlay(r.image, r.labels, class_names=names), result_caption(r)))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(fps=f"{(i + 1) / (time.perf_counter() - start):.1f}",
                                    teacher=f"{100 * totals.teacher_frames / (i + 1):.1f}%", stride=r.stride,
                                    state=r.teacher_state, source=r.source_state)
        except KeyboardInterrupt as exc:
            interrupted, terminated = True, isinstance(exc, Terminated)
            log.warning("%s: saving state and closing outputs", "terminated (SIGTERM)" if terminated else "interrupted")
    summary = totals.summary(time.perf_counter() - start, session)
    summary["interrupted"] = interrupted
    summary["terminated"] = terminated
    if out_video is not None and writer is not None:
        summary["overlay_video"] = str(writer.path)
    if log_path is not None:
        summary["log"] = str(log_path)
    return summary


class RunTotals:
    """A run's numbers kept in constant memory: sums and counts, medians over the last ``window`` frames.

    Weeks of frames must neither grow memory nor make each frame cost more than
    the one before, so nothing here is re-summed per frame.
    """

    def __init__(self, window: int = 4096) -> None:
        self.frames = 0
        self.teacher_frames = 0
        self.updates = 0
        self.train_ms_total = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.reconnects = 0
        self.first_index: Optional[int] = None
        self.last_index: Optional[int] = None
        self._before_sum, self._before_n = 0.0, 0
        self._after_sum, self._after_n = 0.0, 0
        self._infer_ms: collections.deque[float] = collections.deque(maxlen=window)
        self._teacher_ms: collections.deque[float] = collections.deque(maxlen=window)
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=window)
        self.final_stride: Optional[int] = None

    def add(self, r: dict[str, Any]) -> None:
        t = r["timings"]
        self.frames += 1
        self.first_index = r["index"] if self.first_index is None else self.first_index
        self.last_index = r["index"]
        if r["teacher_labelled"]:
            # The first teacher frame is excluded: before it the student has seen nothing.
            if self.teacher_frames and r["accuracy_before"] is not None:
                self._before_sum += r["accuracy_before"]
                self._before_n += 1
            self.teacher_frames += 1
            if t["teacher_ms"] > 0:
                self._teacher_ms.append(t["teacher_ms"])
        if r["accuracy_after"] is not None:
            self._after_sum += r["accuracy_after"]
            self._after_n += 1
        self._infer_ms.append(t["infer_ms"])
        if "latency_ms" in t:
            self._latency_ms.append(t["latency_ms"])
        self.train_ms_total += t["train_ms"]
        self.updates += r["updates"]
        self.bytes_up += r.get("bytes_up", 0)
        self.bytes_down += r.get("bytes_down", 0)
        self.reconnects = r.get("reconnects", self.reconnects)
        self.final_stride = r["stride"]

    def summary(self, seconds: float, session: Optional[Session]) -> dict[str, Any]:
        """Mean IoU against the teacher (before the student trained on each teacher frame),
        teacher %, frames/s, bandwidth, and cost relative to running the teacher on every frame."""
        n = self.frames
        infer_ms = float(np.median(self._infer_ms)) if n else 0.0
        t_ms = float(np.median(self._teacher_ms)) if self._teacher_ms else float("nan")
        agent_cost = n * infer_ms + self.teacher_frames * t_ms + self.train_ms_total
        fps = (getattr(session, "stream_info", None) or {}).get("fps")
        # Seconds of video: frame indices over the source's rate (drops included), else wall time.
        video_s = ((self.last_index - self.first_index + 1) / fps) if fps and n else seconds
        return {
            "frames": n,
            "seconds": round(seconds, 2),
            "fps": round(n / seconds, 2) if seconds > 0 else None,
            "teacher_frames": self.teacher_frames,
            "teacher_percent": round(100.0 * self.teacher_frames / n, 2) if n else 0.0,
            "updates": self.updates,
            "mean_iou_vs_teacher": round(self._before_sum / self._before_n, 4) if self._before_n else None,
            "mean_iou_after_training": round(self._after_sum / self._after_n, 4) if self._after_n else None,
            "teacher_ms_per_frame": round(t_ms, 1),
            "student_infer_ms": round(infer_ms, 1),
            "train_ms_total": round(self.train_ms_total, 1),
            "cost_vs_teacher_every_frame": round(agent_cost / (n * t_ms), 4) if n and self._teacher_ms else None,
            "speedup_vs_teacher_every_frame": round((n * t_ms) / agent_cost, 2) if n and self._teacher_ms and agent_cost else None,
            "final_stride": self.final_stride,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_up_per_teacher_frame": round(self.bytes_up / self.teacher_frames) if self.teacher_frames else None,
            "bytes_down_per_teacher_frame": round(self.bytes_down / self.teacher_frames) if self.teacher_frames else None,
            "kbps_up": round(8 * self.bytes_up / 1000 / video_s, 2) if video_s else None,
            "kbps_down": round(8 * self.bytes_down / 1000 / video_s, 2) if video_s else None,
            "latency_ms_p50": round(float(np.percentile(self._latency_ms, 50)), 1) if self._latency_ms else None,
            "latency_ms_p99": round(float(np.percentile(self._latency_ms, 99)), 1) if self._latency_ms else None,
            "reconnects": self.reconnects,
            "teacher": getattr(session, "teacher_info", None),
        }
