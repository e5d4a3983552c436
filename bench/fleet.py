"""`jitnet bench fleet`: many cameras share one teacher; who gets it, fair turns or need?

N cameras each replay a real clip (different clips, or one clip at different
offsets), each with its own real student, trainer and Algorithm-1 controller
(DistillationAgent in live mode: the teacher's answer arrives while the student
keeps segmenting). They share one teacher whose capacity is given in frames
per second of video time. Time is simulated: one tick per video frame, the
teacher serves ``capacity / fps`` requests per tick from the very queue class
the server uses (``teacher_server.scheduling``), so the results do not depend
on how fast this machine is. The teacher's labels come from the label cache of
``jitnet eval stream`` (computed with the embedded teacher on a miss).

Every policy runs on the same cameras, frames, labels and capacity in one run.
Per camera and overall: mean IoU against the teacher on every frame, teacher
frames used, waits (seconds of video time from request to answer), the worst
camera. JSON + Markdown + a PNG plot.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CLIPS = ("vtest", "bikes", "cup")


@dataclass
class Camera:
    """One simulated camera: a window of a real clip and the teacher's labels on it."""

    name: str
    clip: str
    offset: int
    frames: list = field(repr=False)
    labels: list = field(repr=False)


class SharedTeacher:
    """The one teacher in video time: a real queue policy, ``capacity_per_tick`` answers per tick."""

    def __init__(self, policy: str, capacity_per_tick: float, *, max_wait_s: float, max_stretch: float = 4.0) -> None:
        from teacher_server.scheduling import make_queue

        if capacity_per_tick <= 0:
            raise ValueError(f"teacher capacity must be > 0 frames per tick, got {capacity_per_tick}")
        options = {"max_wait_s": max_wait_s, "max_stretch": max_stretch} if policy == "need" else {}
        self.queue = make_queue(policy, 1 << 20, 1 << 16, **options)
        self.policy = policy
        self.capacity_per_tick = float(capacity_per_tick)
        self._credit = 0.0
        self._answers: dict[int, Any] = {}  # id(job) -> callable producing the answer
        self.served = 0
        self.waits: dict[str, list[float]] = {}
        self.stretches: dict[str, list[float]] = {}

    def submit(self, camera_id: str, frame_index: int, need: Any, now: float, answer) -> Any:
        from teacher_server.batcher import Job

        job = Job(camera_id=camera_id, payload=frame_index, deadline=None, enqueued_at=now, need=need)
        self.queue.put(job)
        self._answers[id(job)] = answer
        return job.future

    def tick(self, now: float) -> None:
        """Serve what this tick's share of capacity allows (an idle teacher banks at most one answer)."""
        self._credit += self.capacity_per_tick
        while self._credit >= 1.0 and len(self.queue):
            batch, expired = self.queue.pop_batch(1, now)
            for job in expired:  # no deadlines in the simulation; kept for completeness
                job.future.cancel()
            if not batch:
                continue
            job = batch[0]
            self._credit -= 1.0
            answer = self._answers.pop(id(job))(job.stride_stretch)
            self.served += 1
            self.waits.setdefault(job.camera_id, []).append(now - job.enqueued_at)
            self.stretches.setdefault(job.camera_id, []).append(job.stride_stretch)
            job.future.set_result(answer)
        if not len(self.queue):
            self._credit = min(self._credit, 1.0)


class SimulatedClient:
    """A camera's teacher client against the SharedTeacher (the agent's edge_agent.teacher.Teacher, live mode).

    Not a second fake teacher: the answers are CachedTeacher's (the one teacher over
    precomputed labels).  What this adds is the job CachedTeacher does not do, the
    live-mode submit(): a request waits in the SharedTeacher's real queue, in video
    time, and its answer carries the stride stretch that queue decided.
    """

    def __init__(self, teacher: SharedTeacher, camera: Camera, groups: Sequence[str], clock) -> None:
        from evaluation.teacher_labels import CachedTeacher

        self._teacher = teacher
        self._camera = camera
        self._cached = CachedTeacher(camera.labels, groups)
        self._clock = clock
        self.needs: list[Any] = []

    def submit(self, frame_rgb, groups, *, frame_index: int, score_threshold=None, need=None):
        self.needs.append(need)

        def answer(stretch: float):
            labels = self._cached.label(frame_rgb, groups, frame_index=frame_index)
            labels.stride_stretch = float(stretch)
            return labels

        return self._teacher.submit(self._camera.name, frame_index, need, self._clock(), answer)

    def label(self, *args: Any, **kwargs: Any):
        raise NotImplementedError("the fleet simulation runs agents in live mode")


def simulate(cameras: Sequence[Camera], groups: Sequence[str], artifacts: Path, config: Any, *, policy: str,
             capacity_fps: float, fps: float, max_wait_s: float, backend: str = "ort") -> dict[str, Any]:
    """Run every camera's real student against one shared teacher under ``policy``; per-camera results."""
    from edge_agent.agent import DistillationAgent
    from edge_agent.trainer import load_trainer
    from evaluation.baselines import Scorer

    ticks = min(len(c.frames) for c in cameras)
    teacher = SharedTeacher(policy, capacity_fps / fps, max_wait_s=max_wait_s)
    now = {"t": 0.0}
    clock = lambda: now["t"]  # noqa: E731 - video time, read by the clients when they submit
    agents, scorers = [], []
    for cam in cameras:
        client = SimulatedClient(teacher, cam, groups, clock)
        agents.append(DistillationAgent(load_trainer(artifacts, backend=backend), client, config, live=True))
        scorers.append(Scorer(groups))
    wall = time.perf_counter()
    for t in range(ticks):
        now["t"] = t / fps
        teacher.tick(now["t"])
        for cam, agent, scorer in zip(cameras, agents, scorers):
            r = agent.process(t, cam.frames[t])
            scorer.add(r.labels, cam.labels[t])
    rows = []
    for cam, agent, scorer in zip(cameras, agents, scorers):
        waits = teacher.waits.get(cam.name, [])
        rows.append({
            "camera": cam.name, "clip": cam.clip, "offset": cam.offset, "frames": ticks,
            "mean_iou": _num(scorer.mean_iou),
            "teacher_frames": agent.counters.teacher_frames,
            "updates": agent.counters.updates,
            "wait_mean_s": _num(float(np.mean(waits))) if waits else None,
            "wait_max_s": _num(float(np.max(waits))) if waits else None,
            "stretched": agent.stretched,
            "final_stride": agent.controller.stride,
            "strides": [d.stride_after for d in agent.controller.history],
        })
    ious = [r["mean_iou"] for r in rows if r["mean_iou"] is not None]
    scored = [r for r in rows if r["mean_iou"] is not None]  # a camera whose frames never hold a class has no IoU
    worst = min(scored, key=lambda r: r["mean_iou"]) if scored else {"camera": None, "mean_iou": None}
    all_waits = [w for ws in teacher.waits.values() for w in ws]
    overall = {
        "mean_iou": _num(float(np.mean(ious))) if ious else None,
        "worst_camera": worst["camera"],
        "worst_iou": worst["mean_iou"],
        "teacher_frames": sum(r["teacher_frames"] for r in rows),
        "teacher_answers": teacher.served,
        "teacher_capacity_frames": capacity_fps / fps * ticks,
        "teacher_busy_fraction": _num(teacher.served / (teacher.capacity_per_tick * ticks)),
        "wait_mean_s": _num(float(np.mean(all_waits))) if all_waits else None,
        "wait_max_s": _num(float(np.max(all_waits))) if all_waits else None,
        "still_queued": len(teacher.queue),
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    log.info("policy %s: mean IoU %s, worst %s (%s), teacher frames %d, %.0f s", policy, overall["mean_iou"],
             worst["camera"], worst["mean_iou"], overall["teacher_frames"], overall["wall_s"])
    return {"policy": policy, "cameras": rows, "overall": overall}


def _num(value: Optional[float], digits: int = 4) -> Optional[float]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def build_cameras(clips: Sequence[str], n_cameras: int, frames: int, *, scale: float, groups: Sequence[str],
                  teacher_spec: str, cache_dir: Path, offset_step: Optional[int] = None) -> tuple[list[Camera], dict[str, Any]]:
    """Cameras over the clips in turn; several on one clip start at spread offsets.

    Offsets: ``offset_step`` apart when given (overlapping windows need fewer
    frames labelled), else disjoint windows when the clip is long enough, else
    spread evenly over the clip.
    """
    from evaluation.label_cache import LabelCache
    from evaluation.teacher_labels import TeacherSource, label_video
    from sdk.clips import find_clip
    from sdk.streams import read_frames

    per_clip: dict[str, int] = {}
    order = [clips[k % len(clips)] for k in range(n_cameras)]
    for clip in order:
        per_clip[clip] = per_clip.get(clip, 0) + 1
    source = TeacherSource(teacher_spec)
    cache = LabelCache(cache_dir)
    loaded: dict[str, tuple[list, list]] = {}
    info: dict[str, Any] = {}
    for clip, count in per_clip.items():
        path = find_clip(clip) if not Path(clip).exists() else Path(clip)
        clip_frames = read_frames(str(path), resize=scale if scale != 1 else None)
        if len(clip_frames) < frames:
            raise ValueError(f"clip {clip} has {len(clip_frames)} frames, fewer than --frames {frames}")
        # Offsets spread over the clip; only the frames some camera sees are labelled.
        span = len(clip_frames) - frames
        offsets = [round(span * k / count) if count > 1 else 0 for k in range(count)]
        if offset_step is not None:
            offsets = [min(span, k * offset_step) for k in range(count)]
        elif count > 1 and span >= frames * (count - 1):
            offsets = [k * frames for k in range(count)]  # disjoint windows when the clip is long enough
        needed = max(offsets) + frames
        vl = label_video(path, clip_frames[:needed], source, groups, cache, extra=f"scale={scale:g}")
        loaded[clip] = (clip_frames[:needed], vl.labels)
        info[clip] = {"path": str(path), "offsets": offsets, "labelled": needed, "cache_hits": vl.hits,
                      "cache_misses": vl.misses}
    source.close()
    cameras, used = [], {c: 0 for c in per_clip}
    for k, clip in enumerate(order):
        off = info[clip]["offsets"][used[clip]]
        used[clip] += 1
        f, lab = loaded[clip]
        cameras.append(Camera(f"cam{k}-{Path(clip).stem}@{off}", clip, off, f[off:off + frames], lab[off:off + frames]))
    return cameras, {"clips": info, "teacher": source.spec, "teacher_identity": list(source.identity()),
                     "label_cache": str(cache_dir)}


def run_fleet(cameras: Sequence[Camera], groups: Sequence[str], artifacts: Path, config: Any, *,
              policies: Sequence[str], capacity_fps: float, fps: float, max_wait_s: float,
              backend: str = "ort") -> dict[str, Any]:
    """Every policy on the same cameras and capacity; the need-minus-fair deltas when both ran."""
    runs = {p: simulate(cameras, groups, artifacts, config, policy=p, capacity_fps=capacity_fps, fps=fps,
                        max_wait_s=max_wait_s, backend=backend) for p in policies}
    total_frames = sum(len(c.frames) for c in cameras)
    report: dict[str, Any] = {
        "cameras": len(cameras), "frames_per_camera": min(len(c.frames) for c in cameras), "fps": fps,
        "capacity_fps": capacity_fps, "capacity_share": capacity_fps / (fps * len(cameras)),
        "total_frames": total_frames, "max_wait_s": max_wait_s, "classes": list(groups),
        "threshold": config.accuracy_threshold, "runs": runs,
    }
    if "fair" in runs and "need" in runs:
        f, n = runs["fair"]["overall"], runs["need"]["overall"]
        fair_worst = f["worst_iou"]
        need_on_fair_worst = next((r["mean_iou"] for r in runs["need"]["cameras"] if r["camera"] == f["worst_camera"]), None)
        report["need_minus_fair"] = {
            "mean_iou": _delta(n["mean_iou"], f["mean_iou"]),
            "worst_iou": _delta(n["worst_iou"], fair_worst),
            "on_fairs_worst_camera": _delta(need_on_fair_worst, fair_worst),
            "teacher_frames": n["teacher_frames"] - f["teacher_frames"],
        }
    return report


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round(a - b, 4)


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    policies = list(runs)
    lines = [
        f"{report['cameras']} cameras x {report['frames_per_camera']} frames at {report['fps']:g} fps of video "
        f"time; teacher capacity {report['capacity_fps']:.3g} frames/s ({100 * report['capacity_share']:.1f}% of "
        f"all frames); threshold {report['threshold']:g}; aging bound {report['max_wait_s']:g} s.",
        "",
        "| camera | " + " | ".join(f"IoU {p}" for p in policies) + " | " + " | ".join(f"teacher frames {p}" for p in policies)
        + " | " + " | ".join(f"mean wait s {p}" for p in policies) + " |",
        "|---|" + "---:|" * (3 * len(policies)),
    ]
    names = [r["camera"] for r in runs[policies[0]]["cameras"]]
    for i, name in enumerate(names):
        rows = [runs[p]["cameras"][i] for p in policies]
        fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(f"| {name} | " + " | ".join(fmt(r["mean_iou"]) for r in rows) + " | "
                     + " | ".join(str(r["teacher_frames"]) for r in rows) + " | "
                     + " | ".join(fmt(r["wait_mean_s"], 2) for r in rows) + " |")
    o = [runs[p]["overall"] for p in policies]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append("| **mean** | " + " | ".join(f"**{fmt(x['mean_iou'])}**" for x in o) + " | "
                 + " | ".join(str(x["teacher_frames"]) for x in o) + " | "
                 + " | ".join("-" if x["wait_mean_s"] is None else f"{x['wait_mean_s']:.2f}" for x in o) + " |")
    lines.append("| **worst camera** | " + " | ".join(f"{fmt(x['worst_iou'])} ({x['worst_camera']})" for x in o)
                 + " |" + " |" * (2 * len(policies)))
    if "need_minus_fair" in report:
        d = report["need_minus_fair"]
        sign = lambda v: "-" if v is None else f"{v:+.3f}"  # noqa: E731
        lines += ["", f"need - fair: mean IoU {sign(d['mean_iou'])}, worst camera {sign(d['worst_iou'])} "
                      f"(on fair's worst camera {sign(d['on_fairs_worst_camera'])}), teacher frames {d['teacher_frames']:+d}."]
    return "\n".join(lines) + "\n"


def write_plot(report: dict[str, Any], path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (the eval extra): no plot")
        return None
    runs = report["runs"]
    policies = list(runs)
    names = [r["camera"] for r in runs[policies[0]]["cameras"]]
    x = np.arange(len(names))
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    for k, p in enumerate(policies):
        vals = [np.nan if r["mean_iou"] is None else r["mean_iou"] for r in runs[p]["cameras"]]
        ax.bar(x + (k - (len(policies) - 1) / 2) * width, vals, width,
               label=f"{p} (mean {runs[p]['overall']['mean_iou']}, {runs[p]['overall']['teacher_frames']} teacher frames)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean IoU vs teacher")
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['cameras']} cameras sharing a teacher at {100 * report['capacity_share']:.1f}% of frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cameras", type=int, default=8, help="cameras sharing the teacher")
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS),
                        help="clips (names or files), given to the cameras in turn; several cameras on one clip "
                             "start at spread offsets")
    parser.add_argument("--frames", type=int, default=200, help="frames per camera")
    parser.add_argument("--offset-step", type=int, default=None,
                        help="frames between the starts of cameras on one clip (default: disjoint windows when they fit)")
    parser.add_argument("--scale", type=float, default=0.5, help="resize frames by this factor (teacher and student)")
    parser.add_argument("--classes", default="person,auto", help="class groups, comma-separated")
    parser.add_argument("--teacher", default="embedded", help="labels the frames the cache does not hold (as `jitnet eval stream --teacher`)")
    parser.add_argument("--cache", type=Path, default=None, help="label cache folder (default: the one of `jitnet eval stream`)")
    cap = parser.add_mutually_exclusive_group()
    cap.add_argument("--capacity", type=float, default=0.03, help="teacher capacity as a share of all cameras' frames")
    cap.add_argument("--capacity-fps", type=float, default=None, help="teacher capacity in frames per second of video time")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second of video time (every camera)")
    parser.add_argument("--policies", default="fair,need", help="queue policies to compare, comma-separated")
    parser.add_argument("--max-wait-s", type=float, default=6.4, help="need policy's aging bound, seconds of video time")
    parser.add_argument("--threshold", type=float, default=0.8, help="every student's accuracy threshold")
    parser.add_argument("--max-updates", type=int, default=8, help="updates per teacher frame at most")
    parser.add_argument("--artifacts", type=Path, default=None, help="student artifacts (default: random init, as `jitnet eval stream --init none`)")
    parser.add_argument("--init", default="none", help="student start when no --artifacts: none | default | checkpoint")
    parser.add_argument("--backend", default="ort", choices=("ort", "torch"))
    parser.add_argument("--json", type=Path, required=True, help="results file (.md and .png beside it)")
    parser.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    from core.config import DistillConfig
    from evaluation.cli import default_label_cache
    from evaluation.student import resolve_start

    groups = [g.strip() for g in args.classes.split(",") if g.strip()]
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.cameras < 1 or args.frames < 1:
        raise SystemExit("--cameras and --frames must be >= 1")
    config = DistillConfig(accuracy_threshold=args.threshold, max_updates=args.max_updates)
    start = resolve_start(groups, artifacts=args.artifacts, init=None if args.artifacts else args.init)
    cameras, setup = build_cameras(clips, args.cameras, args.frames, scale=args.scale, groups=groups,
                                   teacher_spec=args.teacher, cache_dir=args.cache or default_label_cache(),
                                   offset_step=args.offset_step)
    capacity_fps = args.capacity_fps if args.capacity_fps is not None else args.capacity * args.fps * args.cameras
    report = run_fleet(cameras, groups, start.artifacts, config, policies=policies, capacity_fps=capacity_fps,
                       fps=args.fps, max_wait_s=args.max_wait_s, backend=args.backend)
    report["setup"] = {**setup, "student": start.to_dict(), "scale": args.scale}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    md = markdown(report)
    args.json.with_suffix(".md").write_text(md)
    if not args.no_plot:
        write_plot(report, args.json.with_suffix(".png"))
    print(md)
    return 0
