"""Drive a Session over a stream: overlay video, per-frame JSONL log, progress, summary.

Shared by `jitnet run` and `jitnet demo` so both report the same numbers.  The
numbers are the agent's own counters (``edge_agent.counters``, which the metrics
endpoint serves too); the runner adds only what the agent cannot see: the
frame latency from capture to result, the source's reconnects and the wall time.
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

from edge_agent.counters import AgentCounters
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
    counters: Optional[AgentCounters] = None  # this run's agent's, once its first frame is out
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
                if counters is None:
                    counters = session.agent.counters
                if writer is None and out_video is not None:
                    out_video.parent.mkdir(parents=True, exist_ok=True)
                    writer = stack.enter_context(OverlayWriter(out_video, fps=session.stream_info.get("fps") or 10.0))
                if bar is None and progress:
                    from tqdm import tqdm

                    bar = stack.enter_context(tqdm(total=session.stream_info.get("frame_count") if max_frames is None
                                                   else max_frames, unit="frame", dynamic_ncols=True))
                totals.add(r)
                if jsonl is not None:
                    jsonl.write(r.to_dict())
                if writer is not None:
                    writer.write(with_caption(overlay(r.image, r.labels, class_names=names), result_caption(r)))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(fps=f"{(i + 1) / (time.perf_counter() - start):.1f}",
                                    teacher=f"{100 * counters.teacher_frames / (i + 1):.1f}%", stride=r.stride,
                                    state=r.teacher_state, source=r.source_state)
        except KeyboardInterrupt as exc:
            interrupted, terminated = True, isinstance(exc, Terminated)
            log.warning("%s: saving state and closing outputs", "terminated (SIGTERM)" if terminated else "interrupted")
    summary = totals.summary(time.perf_counter() - start, session, counters or AgentCounters())
    summary["interrupted"] = interrupted
    summary["terminated"] = terminated
    if out_video is not None and writer is not None:
        summary["overlay_video"] = str(writer.path)
    if log_path is not None:
        summary["log"] = str(log_path)
    return summary


class RunTotals:
    """What only the runner sees, in constant memory; the rest of a run's summary is the agent's counters.

    The frame latency (capture to result, the wait in a live buffer included) is
    measured around the agent, so the agent cannot count it; the reconnects are
    the source's.  Medians are over the last ``window`` frames, so weeks of
    frames neither grow memory nor make each frame cost more.
    """

    def __init__(self, window: int = 4096) -> None:
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=window)
        self.reconnects = 0

    def add(self, result: Any) -> None:
        """One FrameResult as the session delivered it."""
        if "latency_ms" in result.timings:
            self._latency_ms.append(result.timings["latency_ms"])
        self.reconnects = result.reconnects

    def summary(self, seconds: float, session: Optional[Session], counters: AgentCounters) -> dict[str, Any]:
        """The agent's summary (mean IoU against the teacher, teacher %, updates, bytes, flow and fusion time,
        cost relative to the teacher on every frame: see edge_agent.counters) with frames/s, kbps and latency."""
        out = counters.summary()
        n = out["frames"]
        fps = (getattr(session, "stream_info", None) or {}).get("fps")
        # Seconds of video: frame indices over the source's rate (drops included), else wall time.
        video_s = ((counters.last_index - counters.first_index + 1) / fps) if fps and n else seconds
        out.update({
            "seconds": round(seconds, 2),
            "fps": round(n / seconds, 2) if seconds > 0 else None,
            "kbps_up": round(8 * out["bytes_up"] / 1000 / video_s, 2) if video_s else None,
            "kbps_down": round(8 * out["bytes_down"] / 1000 / video_s, 2) if video_s else None,
            "latency_ms_p50": round(float(np.percentile(self._latency_ms, 50)), 1) if self._latency_ms else None,
            "latency_ms_p99": round(float(np.percentile(self._latency_ms, 99)), 1) if self._latency_ms else None,
            "reconnects": self.reconnects,
            "teacher": getattr(session, "teacher_info", None),
        })
        return out
