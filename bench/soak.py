"""`jitnet bench soak`: a real clip looped through the agent, live, for N minutes; does it stay flat?

One session, one stream, one agent: the clip is decoded again and again into a
single live source paced at the clip's frame rate, so the student, the stride
controller and the teacher connection live as long as the run does (as on a
camera). Every ``--interval-s`` (a minute by default) one row: resident memory,
frame latency p50/p99 (from the moment the frame left the source to the end of
its processing, the wait in the live buffer included), frames delivered and
dropped, teacher frames. The issue's targets: RSS grows by < 5% after the
first 5 minutes, p99 latency within 2x p50.

The counts in each row (frames, teacher frames, updates, bytes) are the
differences of the agent's own counters (``edge_agent.counters``) between the
row's ends; what is the soak's own is the latency per row (measured around the
agent), the frame time percentiles per row, RSS and the stream's reads and drops.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger(__name__)

RSS_GROWTH_TARGET_PERCENT = 5.0
P99_OVER_P50_TARGET = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default=None, help="clip name (vtest, bikes) or path (default: the demo clip)")
    parser.add_argument("--teacher", default="embedded:yolov5s-seg",
                        help="teacher URL, or embedded:BACKEND to run one in this process")
    parser.add_argument("--classes", default="person")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run")
    parser.add_argument("--interval-s", type=float, default=60.0, help="seconds per reported row")
    parser.add_argument("--warmup-minutes", type=float, default=5.0,
                        help="RSS growth and the latency target are judged after this much time")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--scale", type=float, default=0.5, help="frame scale for the student")
    parser.add_argument("--artifacts", type=Path, help="artifact directory (default: the shipped student)")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="ORT threads for the student (default: all cores)")
    parser.add_argument("--json", type=Path, help="write the report here")


def rss_mb() -> float:
    """Resident set size of this process (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    import resource  # not Linux: the peak is the best there is

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def looped_clip(path: Path) -> Iterator[Any]:
    """The clip's RGB frames, from the start again each time it ends, forever (constant memory)."""
    from sdk.streams import open_stream

    passes = 0
    while True:
        with open_stream(str(path), live=False) as stream:
            n = 0
            for frame in stream:
                n += 1
                yield frame.image_rgb
        passes += 1
        if n == 0:
            raise RuntimeError(f"{path}: no frames to loop")
        log.debug("%s: pass %d done (%d frames)", path, passes, n)


def _percentile(values: list[float], q: float) -> Optional[float]:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


#: The agent's counters a row reports as differences over its interval.
COUNTED = ("frames", "teacher_frames", "updates", "bytes_up", "bytes_down")


class _Row:
    """What one interval saw: the agent's counters and the stream's stats at its start, its frames' latencies."""

    def __init__(self, start_s: float, stats: Any, counted: dict[str, int]) -> None:
        self.start_s = start_s
        self.latency: list[float] = []
        self.frame_ms: list[float] = []
        self._counted0 = counted
        self._read0, self._dropped0 = stats.read, stats.dropped

    def add(self, r: Any) -> None:
        self.latency.append(r.timings["latency_ms"])
        self.frame_ms.append(r.timings["frame_ms"])

    def close(self, end_s: float, stats: Any, counters: dict[str, Any]) -> dict[str, Any]:
        seconds = end_s - self.start_s
        p50, p99 = _percentile(self.latency, 50), _percentile(self.latency, 99)
        n = {k: counters[k] - self._counted0[k] for k in COUNTED}
        return {
            "minute": round(end_s / 60.0, 3), "seconds": round(seconds, 2),
            "rss_mb": round(rss_mb(), 1),
            "frames": n["frames"], "frames_read": stats.read - self._read0,
            "dropped": stats.dropped - self._dropped0,
            "fps": round(n["frames"] / seconds, 2) if seconds > 0 else None,
            "latency_ms_p50": p50, "latency_ms_p99": p99,
            "p99_over_p50": round(p99 / p50, 2) if p50 else None,
            "frame_ms_p50": _percentile(self.frame_ms, 50), "frame_ms_p99": _percentile(self.frame_ms, 99),
            "teacher_frames": n["teacher_frames"], "updates": n["updates"],
            "bytes_up": n["bytes_up"], "bytes_down": n["bytes_down"], "stride": counters["stride"],
        }


def soak(session: Any, clip: Path, *, seconds: float, interval_s: float,
         scale: float) -> tuple[list[dict], float, dict[str, Any]]:
    """Run the looped clip live through ``session`` for ``seconds``: one row per ``interval_s``, the clip's fps,
    and the agent's summary of the whole run (edge_agent.counters)."""
    from sdk.streams import open_stream

    with open_stream(str(clip), live=False) as probe:
        fps = probe.fps
    results = session.segment(looped_clip(clip), live=True, fps=fps, resize=scale)
    rows: list[dict] = []
    start = time.monotonic()
    row: Optional[_Row] = None
    counters = None
    try:
        for r in results:
            now = time.monotonic() - start
            if row is None:  # the first frame: this run's agent exists now, its counters start at zero
                counters = session.agent.counters
                row = _Row(0.0, session.stream.stats, dict.fromkeys(COUNTED, 0))
            row.add(r)
            if now - row.start_s >= interval_s or now >= seconds:
                counted = counters.snapshot()
                rows.append(row.close(now, session.stream.stats, counted))
                log.info("soak %.1f min: %s", now / 60.0, rows[-1])
                row = _Row(now, session.stream.stats, counted)
            if now >= seconds:
                break
    finally:
        results.close()
    return rows, fps, counters.summary() if counters is not None else {}


def summarize(rows: list[dict], warmup_s: float) -> dict[str, Any]:
    """RSS growth and latency spread after the warm-up, against the issue's targets."""
    after = [r for r in rows if r["minute"] * 60.0 > warmup_s + 1e-6]
    base_rows = [r for r in rows if r["minute"] * 60.0 <= warmup_s + 1e-6]
    base = base_rows[-1] if base_rows else (rows[0] if rows else None)
    out: dict[str, Any] = {"warmup_s": warmup_s, "rows_after_warmup": len(after)}
    if base is None or not after:
        out.update({"rss_growth_percent": None, "rss_target_met": None, "latency_target_met": None,
                    "note": "the run ended before the warm-up did: nothing to judge"})
        return out
    growth = 100.0 * (after[-1]["rss_mb"] - base["rss_mb"]) / base["rss_mb"]
    peak = max(r["rss_mb"] for r in after)
    ratios = [r["p99_over_p50"] for r in after if r["p99_over_p50"] is not None]
    out.update({
        "rss_mb_at_warmup": base["rss_mb"], "rss_mb_last": after[-1]["rss_mb"], "rss_mb_peak_after_warmup": peak,
        "rss_growth_percent": round(growth, 2),
        "rss_peak_growth_percent": round(100.0 * (peak - base["rss_mb"]) / base["rss_mb"], 2),
        "rss_target_met": growth < RSS_GROWTH_TARGET_PERCENT,
        "p99_over_p50_worst_row": max(ratios) if ratios else None,
        "p99_over_p50_median_row": sorted(ratios)[len(ratios) // 2] if ratios else None,
        "latency_target_met": bool(ratios) and max(ratios) <= P99_OVER_P50_TARGET,
        "frames": sum(r["frames"] for r in rows), "dropped": sum(r["dropped"] for r in rows),
        "teacher_frames": sum(r["teacher_frames"] for r in rows),
    })
    return out


def markdown(rows: list[dict], summary: dict[str, Any]) -> str:
    lines = ["| minute | RSS MB | frames | dropped | fps | latency p50 ms | p99 ms | p99/p50 | teacher frames | stride |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['minute']:.2f} | {r['rss_mb']:.1f} | {r['frames']} | {r['dropped']} | {r['fps']} | "
                     f"{r['latency_ms_p50']} | {r['latency_ms_p99']} | {r['p99_over_p50']} | "
                     f"{r['teacher_frames']} | {r['stride']} |")

    def verdict(ok: Optional[bool]) -> str:
        return "not judged" if ok is None else ("met" if ok else "missed")

    lines.append("")
    lines.append(f"RSS growth after {summary['warmup_s'] / 60:g} min: {summary.get('rss_growth_percent')}% "
                 f"(target < {RSS_GROWTH_TARGET_PERCENT:g}%: {verdict(summary.get('rss_target_met'))}); "
                 f"p99/p50 worst row after it: {summary.get('p99_over_p50_worst_row')} "
                 f"(target <= {P99_OVER_P50_TARGET:g}: {verdict(summary.get('latency_target_met'))})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bench.machine import cpu_model
    from sdk.clips import find_clip, first_available
    from sdk.session import connect

    clip = first_available(("vtest", "bikes")) if args.clip is None else (
        Path(args.clip) if Path(args.clip).exists() else find_clip(args.clip))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    seconds = args.minutes * 60.0
    options: dict[str, Any] = {"classes": classes, "width": args.width, "threads": args.threads}
    if args.artifacts:
        options["artifacts"] = args.artifacts
    wall = time.time()
    with connect(args.teacher, threshold=args.threshold, **options) as session:
        rows, fps, agent = soak(session, clip, seconds=seconds, interval_s=args.interval_s, scale=args.scale)
        teacher = session.teacher_info
    summary = summarize(rows, args.warmup_minutes * 60.0)
    report = {"clip": str(clip), "clip_fps": fps, "teacher": args.teacher, "teacher_info": teacher,
              "classes": classes, "scale": args.scale, "threshold": args.threshold, "minutes": args.minutes,
              "interval_s": args.interval_s, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall)),
              "cpu": cpu_model(), "platform": platform.platform(), "rows": rows, "summary": summary, "agent": agent}
    print(markdown(rows, summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
