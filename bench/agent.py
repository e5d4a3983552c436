"""`jitnet bench agent`: online distillation vs the teacher on every frame, one clip, one run.

(a) the teacher labels every frame (its labels are also the reference);
(b) the agent at thresholds 0.7 / 0.8 / 0.9, each from the same initial
student, asking the same teacher (in process, so the cost counted is the
teacher's compute, not the network).  Costs are this machine's measured
milliseconds: teacher ms per frame, and the agent's own time (inference,
train steps, flow and fusion) from its counters (edge_agent.counters).

Bandwidth per camera: each teacher frame's LabelRequest (the frame as the
agent holds it, shrunk to ``--teacher-max-side``, JPEG ``--jpeg-quality``:
what TeacherClient sends) and the LabelResponse the server would answer with
(label map PNG, instances, timings), serialized and counted, over the seconds
of video (frames / the clip's fps); the teacher row sends every frame.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default=None, help="clip name (vtest, bikes) or path (default: the demo clip)")
    parser.add_argument("--teacher", default="yolov7-seg", help="teacher backend name")
    parser.add_argument("--classes", default="person,auto")
    parser.add_argument("--thresholds", default="0.7,0.8,0.9")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--scale", type=float, default=0.5, help="frame scale for the student (and the teacher)")
    parser.add_argument("--artifacts", type=Path, help="artifact directory (default: exported on first use)")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--teacher-max-side", type=int, default=512,
                        help="longest side of the frames sent to the teacher, for the bandwidth columns (0 = as is)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the frames sent, likewise")
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

    from core.config import DistillConfig
    from edge_agent.agent import DistillationAgent
    from edge_agent.counters import FUSION_KEYS
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
    clip_fps = _clip_fps(clip)
    video_s = n / clip_fps

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
    wire = WireMeter(frames, labels, max_side=args.teacher_max_side or None, jpeg_quality=args.jpeg_quality)
    sent_threshold = DistillConfig().score_threshold  # what the agent's requests carry
    every_up, every_down = map(sum, zip(*(wire.sizes(i, groups, sent_threshold) for i in range(n))))
    rows: list[dict[str, Any]] = [{
        "method": f"teacher every frame ({labeler.model_name})", "threshold": None, "frames": n,
        "fps": round(n / (time.perf_counter() - start), 2), "compute_ms": round(teacher_total_ms, 1),
        "teacher_percent": 100.0, "mean_iou": 1.0, "speedup": 1.0,
        **_bandwidth(every_up, every_down, n, video_s),
    }]
    print(f"{rows[0]['method']}: {n} frames, {t_ms:.0f} ms/frame")
    for threshold in (float(x) for x in args.thresholds.split(",")):
        trainer = load_trainer(artifacts)
        teacher = CachedTeacher(labels, groups, labeler.model_name, labeler.model_version,
                                score_threshold=labeler.score_threshold)
        agent = DistillationAgent(trainer, wire.metering(teacher), DistillConfig(accuracy_threshold=threshold))
        scorer = Scorer(groups)
        start = time.perf_counter()
        for i, f in enumerate(frames):
            r = agent.process(i, f)
            scorer.add(r.labels, labels[i].label_map)  # the paper's rule, as in `jitnet eval stream`
        wall = time.perf_counter() - start
        c = agent.counters
        # The agent's own time (inference, train steps, flow and fusion) is its frames' time without the
        # in-process teacher's; the teacher is charged at its median per call, as in the teacher row.
        student_ms = c.time_ms_total["frame_ms"] - c.time_ms_total["teacher_ms"]
        compute = student_ms + c.teacher_frames * t_ms
        rows.append({
            "method": "jitnet online distillation", "threshold": threshold, "frames": n,
            "fps": round(n / (wall + c.teacher_frames * t_ms / 1e3), 2), "compute_ms": round(compute, 1),
            "teacher_percent": round(100.0 * c.teacher_frames / n, 2), "updates": c.updates,
            "mean_iou": round(scorer.mean_iou, 4), "speedup": round(teacher_total_ms / compute, 2),
            "flow_fusion_ms_total": round(sum(c.time_ms_total.get(k, 0.0) for k in FUSION_KEYS), 1),
            "teacher_frame_indices": list(teacher.asked), **_bandwidth(c.bytes_up, c.bytes_down, n, video_s),
        })
        print(f"threshold {threshold}: teacher {rows[-1]['teacher_percent']}%, mean IoU {rows[-1]['mean_iou']:.3f}, "
              f"speedup {rows[-1]['speedup']}x, {rows[-1]['kbps_up']} kbps up / {rows[-1]['kbps_down']} down")
    report = {"clip": str(clip), "clip_fps": clip_fps, "video_s": round(video_s, 3), "teacher": labeler.model_name,
              "classes": groups, "scale": args.scale, "teacher_max_side": args.teacher_max_side or None,
              "jpeg_quality": args.jpeg_quality, "teacher_ms_per_frame": round(t_ms, 1), "rows": rows}
    print(bandwidth_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return 0


def _clip_fps(clip: Path) -> float:
    from sdk.streams import open_stream

    with open_stream(str(clip), live=False) as stream:
        return float(stream.fps)


def _bandwidth(bytes_up: int, bytes_down: int, frames: int, video_s: float) -> dict[str, Any]:
    """One camera's bytes, and kbps over the seconds of video they covered."""
    return {"bytes_up": bytes_up, "bytes_down": bytes_down, "video_s": round(video_s, 3),
            "kbps_up": round(8 * bytes_up / 1000 / video_s, 2), "kbps_down": round(8 * bytes_down / 1000 / video_s, 2)}


def bandwidth_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| method | threshold | teacher frames | kbps up | kbps down | kbps up + down |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['threshold'] if r['threshold'] is not None else '-'} | "
                     f"{r['teacher_percent']}% | {r['kbps_up']} | {r['kbps_down']} | "
                     f"{round(r['kbps_up'] + r['kbps_down'], 2)} |")
    return "\n".join(lines)


class WireMeter:
    """What each teacher answer would have cost on the wire, for an agent asking an in-process teacher.

    The request is built as TeacherClient builds it (the frame shrunk to
    ``max_side``, JPEG at ``jpeg_quality``), the response as the teacher
    server builds it (label map PNG at the size sent, instances, timings);
    both serialized and measured, so the bytes are the protobuf messages', not an estimate.
    """

    def __init__(self, frames: Sequence[Any], answers: Sequence[Any], *, max_side: Optional[int], jpeg_quality: int,
                 camera_id: str = "cam0") -> None:
        self.frames, self.answers = frames, answers
        self.max_side, self.jpeg_quality, self.camera_id = max_side, jpeg_quality, camera_id

    def sizes(self, index: int, groups: Sequence[str], score_threshold: Optional[float] = None) -> tuple[int, int]:
        import cv2

        from edge_agent.teacher_client import encode_frame, shrink_to_max_side
        from protos import teacher_pb2
        from teacher_server.codec import encode_label_map

        sent = shrink_to_max_side(self.frames[index], self.max_side)
        fields: dict[str, Any] = dict(camera_id=self.camera_id, frame_index=index, groups=list(groups),
                                      **encode_frame(sent, "jpeg", self.jpeg_quality))
        if score_threshold is not None:
            fields["score_threshold"] = float(score_threshold)
        request = teacher_pb2.LabelRequest(**fields)
        answer = self.answers[index]
        label_map = answer.label_map
        h, w = sent.shape[:2]
        sx, sy = w / label_map.shape[1], h / label_map.shape[0]
        if label_map.shape != (h, w):  # the teacher labels the frame it was sent
            label_map = cv2.resize(label_map, (w, h), interpolation=cv2.INTER_NEAREST)
        t = answer.timings
        response = teacher_pb2.LabelResponse(
            camera_id=self.camera_id, frame_index=index, height=h, width=w, label_map_png=encode_label_map(label_map),
            groups=list(answer.groups),
            instances=[teacher_pb2.Instance(
                box=teacher_pb2.Box(x0=i.box[0] * sx, y0=i.box[1] * sy, x1=i.box[2] * sx, y1=i.box[3] * sy),
                group=i.group, group_index=i.group_index, score=i.score, class_name=getattr(i, "class_name", ""))
                for i in answer.instances],
            model_name=answer.model_name, model_version=answer.model_version,
            timings=teacher_pb2.Timings(inference_ms=t.get("inference_ms", 0.0), postprocess_ms=t.get("postprocess_ms", 0.0),
                                        decode_ms=1.0, encode_ms=1.0, total_ms=sum(t.values()) + 2.0, batch_size=1),
        )
        return request.ByteSize(), response.ByteSize()

    def metering(self, teacher: Any) -> "_Metered":
        return _Metered(teacher, self)


class _Metered:
    """A Teacher whose answers carry the bytes they would have cost (see WireMeter)."""

    def __init__(self, teacher: Any, meter: WireMeter) -> None:
        self._teacher, self._meter = teacher, meter

    def label(self, frame_rgb: Any, groups: Sequence[str], *, frame_index: int, score_threshold: Optional[float] = None,
              need: Any = None):
        labels = self._teacher.label(frame_rgb, groups, frame_index=frame_index, score_threshold=score_threshold,
                                     need=need)
        labels.bytes_up, labels.bytes_down = self._meter.sizes(frame_index, groups, score_threshold)
        return labels

    def __getattr__(self, name: str) -> Any:
        return getattr(self._teacher, name)


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
