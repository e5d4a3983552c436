"""`jitnet bench agent`: online distillation vs the teacher on every frame, one clip, one run.

(a) the teacher labels every frame (its labels are also the reference);
(b) the agent at thresholds 0.7 / 0.8 / 0.9, each from the same initial
student, asking the same teacher (in process, so the cost counted is the
teacher's compute, not the network).  Costs are this machine's measured
milliseconds: teacher ms per frame, student inference, train steps.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default=None, help="clip name (vtest, bikes) or path (default: the demo clip)")
    parser.add_argument("--teacher", default="yolov7-seg", help="teacher backend name")
    parser.add_argument("--classes", default="person,auto")
    parser.add_argument("--thresholds", default="0.7,0.8,0.9")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--scale", type=float, default=0.5, help="frame scale for the student (and the teacher)")
    parser.add_argument("--artifacts", type=Path, help="artifact directory (default: exported on first use)")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--student-only", action="store_true",
                        help="time the agent loop alone (teacher labels precomputed, threshold 0.8): frames/s")
    parser.add_argument("--baseline-ref", help="with --student-only: also run the loop on this git commit "
                        "(a worktree), alternating, and report the ratio")
    parser.add_argument("--repeats", type=int, default=3, help="with --student-only: alternating runs per tree")
    parser.add_argument("--threads", type=int, default=0, help="with --student-only: ORT threads (0 = all cores)")


def run(args: argparse.Namespace) -> int:
    if args.student_only:
        return _run_student_only(args)
    import numpy as np

    from edge_agent.agent import DistillationAgent
    from core.config import DistillConfig
    from edge_agent.trainer import load_trainer
    from sdk.clips import find_clip, first_available
    from evaluation.baselines import Scorer
    from evaluation.teacher_labels import CachedTeacher
    from sdk.session import default_artifacts
    from sdk.streams import read_frames
    from teacher_server.labeler import Labeler

    clip = first_available(("vtest", "bikes")) if args.clip is None else (
        Path(args.clip) if Path(args.clip).exists() else find_clip(args.clip))
    groups = [c.strip() for c in args.classes.split(",") if c.strip()]
    frames = read_frames(str(clip), max_frames=args.frames, resize=args.scale)
    n = len(frames)
    artifacts = args.artifacts or default_artifacts(groups, args.width)

    labeler = Labeler.from_name(args.teacher)
    labeler.backend.warmup()
    start = time.perf_counter()
    teacher_ms = []
    labels = []
    for f in frames:
        t = time.perf_counter()
        labels.append(labeler.label(f, groups))
        teacher_ms.append((time.perf_counter() - t) * 1e3)
    teacher_total_ms = sum(teacher_ms)
    t_ms = float(np.median(teacher_ms))
    rows: list[dict[str, Any]] = [{
        "method": f"teacher every frame ({labeler.model_name})", "threshold": None, "frames": n,
        "fps": round(n / (time.perf_counter() - start), 2), "compute_ms": round(teacher_total_ms, 1),
        "teacher_percent": 100.0, "mean_iou": 1.0, "speedup": 1.0,
    }]
    print(f"{rows[0]['method']}: {n} frames, {t_ms:.0f} ms/frame")
    for threshold in (float(x) for x in args.thresholds.split(",")):
        trainer = load_trainer(artifacts)
        teacher = CachedTeacher(labels, groups, labeler.model_name, labeler.model_version,
                                score_threshold=labeler.score_threshold)
        agent = DistillationAgent(trainer, teacher, DistillConfig(accuracy_threshold=threshold))
        scorer, student_ms = Scorer(groups), 0.0
        start = time.perf_counter()
        for i, f in enumerate(frames):
            r = agent.process(i, f)
            student_ms += r.timings["frame_ms"] - r.timings["teacher_ms"]
            scorer.add(r.labels, labels[i].label_map)  # the paper's rule, as in `jitnet eval stream`
        wall = time.perf_counter() - start
        compute = student_ms + teacher.calls * t_ms
        rows.append({
            "method": "jitnet online distillation", "threshold": threshold, "frames": n,
            "fps": round(n / (wall + teacher.calls * t_ms / 1e3), 2), "compute_ms": round(compute, 1),
            "teacher_percent": round(100.0 * teacher.calls / n, 2), "updates": agent.updates,
            "mean_iou": round(scorer.mean_iou, 4), "speedup": round(teacher_total_ms / compute, 2),
        })
        print(f"threshold {threshold}: teacher {rows[-1]['teacher_percent']}%, mean IoU {rows[-1]['mean_iou']:.3f}, "
              f"speedup {rows[-1]['speedup']}x")
    report = {"clip": str(clip), "teacher": labeler.model_name, "classes": groups, "scale": args.scale,
              "teacher_ms_per_frame": round(t_ms, 1), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return 0


def _run_student_only(args: argparse.Namespace) -> int:
    import os

    from bench.student_loop import compare
    from sdk.clips import find_clip, first_available
    from sdk.session import default_artifacts
    from sdk.streams import read_frames

    clip = first_available(("vtest", "bikes")) if args.clip is None else (
        Path(args.clip) if Path(args.clip).exists() else find_clip(args.clip))
    groups = [c.strip() for c in args.classes.split(",") if c.strip()]
    frames = read_frames(str(clip), max_frames=args.frames, resize=args.scale)
    artifacts = args.artifacts or default_artifacts(groups, args.width)
    report = compare(list(frames), groups, teacher=args.teacher, artifacts=artifacts, baseline_ref=args.baseline_ref,
                     repeats=args.repeats, threads=args.threads or os.cpu_count() or 1)
    report.update({"clip": str(clip), "scale": args.scale, "teacher": args.teacher, "classes": groups})
    for row in report["rows"]:
        print(f"{row['code']}: {row['fps_median']} frames/s (runs {row['fps_runs']}), "
              f"{row['forwards_per_frame']} forwards/frame, mean IoU {row['mean_iou']}")
    if "speedup_vs_baseline" in report:
        print(f"student-only loop: {report['speedup_vs_baseline']}x the baseline's frames/s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return 0
