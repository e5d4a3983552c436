"""The agent's running totals: the one set of counters that every report reads.

The agent adds each processed frame's ``FrameResult`` here once; the run
summary (``sdk.runner``), the metrics endpoint (``sdk.agent_metrics``) and the
benchmarks read these numbers instead of counting again, so they cannot
disagree.  Memory stays constant however long the agent runs: sums and counts,
medians over the last ``window`` frames, the frame rate over the last
``rate_window_s`` seconds (at most ``window`` frames).  Reads from another thread (a metrics scrape) take
:meth:`AgentCounters.snapshot`, a consistent copy.

Definitions, once:

- ``bytes_up`` / ``bytes_down``: what the network carried for the teacher calls
  that ended on these frames, every attempt included, failed calls included
  (see ``edge_agent.teacher``).
- ``time_ms_total[key]``: the sum of ``FrameResult.timings[key]`` (infer_ms,
  train_ms, teacher_ms, frame_ms, and with fusion flow_ms and fusion_ms).
- ``mean_iou_vs_teacher``: the mean IoU of the agent's *output* (fused with the
  carried answer when fusion is on) on each teacher frame before its answer was
  known, the first teacher frame excluded (before it the agent has seen nothing
  of this camera): the product's accuracy on frames it had not been told about;
  ``student_iou_vs_teacher`` the student's alone on the same frames, before
  training on them; ``mean_iou_after_training`` the student's after training.
- The cost model: the agent's time, ``frames x (inference + flow + fusion)``
  per-frame medians, plus ``teacher_frames x`` the teacher's median, plus every
  train step, against ``frames x`` the teacher's median (the teacher on every frame).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Optional

import numpy as np

#: Timing keys of the output's flow carry and fusion (present only with DistillConfig.fusion="flow").
FUSION_KEYS = ("flow_ms", "fusion_ms")


class AgentCounters:
    """Frames, teacher frames, updates, bytes, failures, time per timing key, accuracy, fusion."""

    def __init__(self, *, window: int = 4096, rate_window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.rate_window_s = rate_window_s
        self.frames = 0
        self.teacher_frames = 0
        self.updates = 0
        self.bytes_up = 0
        self.bytes_down = 0
        #: Teacher calls that failed or answered something the student cannot learn from.
        self.teacher_failures = 0
        self.scene_cuts = 0
        self.carried_fraction_sum = 0.0
        self.time_ms_total: dict[str, float] = {}
        self.first_index: Optional[int] = None
        self.last_index: Optional[int] = None
        self._before_sum, self._before_n = 0.0, 0
        self._output_sum = 0.0
        self._after_sum, self._after_n = 0.0, 0
        # Gauges: what the last frame said.
        self.stride = 0
        self.teacher_state = "off"
        self.last_accuracy: Optional[float] = None
        self.last_infer_ms = 0.0
        self.last_train_ms = 0.0  # of the last frame that trained
        self.last_frame_at: Optional[float] = None  # time.monotonic()
        self._infer_ms: collections.deque[float] = collections.deque(maxlen=window)
        self._teacher_ms: collections.deque[float] = collections.deque(maxlen=window)
        self._fusion_ms: collections.deque[float] = collections.deque(maxlen=window)
        # Frame times for the frame rate: the last rate_window_s seconds, at most ``window`` frames.
        self._recent: collections.deque[float] = collections.deque(maxlen=window)

    # -- written by the agent, once per frame ----------------------------------------------
    def add(self, result: Any) -> None:
        """Count one processed frame (an edge_agent.agent.FrameResult)."""
        now = time.monotonic()
        t = result.timings
        with self._lock:
            self.frames += 1
            self.first_index = result.index if self.first_index is None else self.first_index
            self.last_index = result.index
            if result.teacher_labelled:
                if self.teacher_frames and result.accuracy_before is not None:
                    self._before_sum += result.accuracy_before
                    output = getattr(result, "output_accuracy", None)
                    self._output_sum += output if output is not None else result.accuracy_before
                    self._before_n += 1
                self.teacher_frames += 1
                if t.get("teacher_ms", 0.0) > 0:
                    self._teacher_ms.append(t["teacher_ms"])
            if result.accuracy_after is not None:
                self._after_sum += result.accuracy_after
                self._after_n += 1
            self.updates += result.updates
            self.bytes_up += result.bytes_up
            self.bytes_down += result.bytes_down
            self.scene_cuts += int(result.scene_cut)
            self.carried_fraction_sum += result.carried_fraction
            for key, ms in t.items():
                self.time_ms_total[key] = self.time_ms_total.get(key, 0.0) + ms
            infer = t.get("infer_ms", 0.0)
            self._infer_ms.append(infer)
            if any(k in t for k in FUSION_KEYS):
                self._fusion_ms.append(sum(t.get(k, 0.0) for k in FUSION_KEYS))
            self.stride, self.teacher_state = result.stride, result.teacher_state
            accuracy = result.accuracy_after if result.accuracy_after is not None else result.accuracy_before
            if accuracy is not None:
                self.last_accuracy = accuracy
            self.last_infer_ms = infer
            if t.get("train_ms"):
                self.last_train_ms = t["train_ms"]
            self.last_frame_at = now
            self._recent.append(now)
            while self._recent[0] < now - self.rate_window_s:
                self._recent.popleft()

    def teacher_failed(self) -> None:
        """Count one failed teacher call (the agent calls this where it records the failure)."""
        with self._lock:
            self.teacher_failures += 1

    # -- read by everyone else -------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter and gauge, safe to take from another thread."""
        with self._lock:
            now = time.monotonic()
            recent = [x for x in self._recent if x >= now - self.rate_window_s]
            span = (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
            infer_p50 = _median(self._infer_ms)
            fusion_p50 = _median(self._fusion_ms)
            return {
                "frames": self.frames, "teacher_frames": self.teacher_frames, "updates": self.updates,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "teacher_failures": self.teacher_failures, "scene_cuts": self.scene_cuts,
                "carried_fraction_sum": self.carried_fraction_sum,
                "time_ms_total": dict(self.time_ms_total),
                "first_index": self.first_index, "last_index": self.last_index,
                "before_sum": self._before_sum, "before_n": self._before_n, "output_sum": self._output_sum,
                "after_sum": self._after_sum, "after_n": self._after_n,
                "stride": self.stride, "teacher_state": self.teacher_state, "last_accuracy": self.last_accuracy,
                "last_infer_ms": self.last_infer_ms, "last_train_ms": self.last_train_ms,
                "last_frame_at": self.last_frame_at,
                "fps": (len(recent) - 1) / span if span > 0 else 0.0,
                "infer_ms_p50": infer_p50, "teacher_ms_p50": _median(self._teacher_ms),
                # With fusion off no frame spent anything on it: 0, not unknown.
                "flow_fusion_ms_p50": fusion_p50 if self._fusion_ms else 0.0,
            }

    def summary(self) -> dict[str, Any]:
        """The agent's numbers as the run summary reports them (see the module docstring)."""
        s = self.snapshot()
        n, tf = s["frames"], s["teacher_frames"]
        infer_ms, t_ms, ff_ms = s["infer_ms_p50"], s["teacher_ms_p50"], s["flow_fusion_ms_p50"]
        train_total = s["time_ms_total"].get("train_ms", 0.0)
        has_teacher = n and t_ms == t_ms  # a median teacher time exists (NaN != NaN)
        agent_cost = n * ((infer_ms if n else 0.0) + ff_ms) + (tf * t_ms if tf else 0.0) + train_total
        return {
            "frames": n,
            "teacher_frames": tf,
            "teacher_percent": round(100.0 * tf / n, 2) if n else 0.0,
            "updates": s["updates"],
            "teacher_failures": s["teacher_failures"],
            "mean_iou_vs_teacher": round(s["output_sum"] / s["before_n"], 4) if s["before_n"] else None,
            "student_iou_vs_teacher": round(s["before_sum"] / s["before_n"], 4) if s["before_n"] else None,
            "mean_iou_after_training": round(s["after_sum"] / s["after_n"], 4) if s["after_n"] else None,
            "teacher_ms_per_frame": round(t_ms, 1),
            "student_infer_ms": round(infer_ms, 1) if n else 0.0,
            "flow_fusion_ms_per_frame": round(ff_ms, 2),
            "flow_fusion_share_of_infer": round(ff_ms / infer_ms, 4) if n and infer_ms > 0 else None,
            "train_ms_total": round(train_total, 1),
            "time_ms_total": {k: round(v, 1) for k, v in sorted(s["time_ms_total"].items())},
            "cost_vs_teacher_every_frame": round(agent_cost / (n * t_ms), 4) if has_teacher else None,
            "speedup_vs_teacher_every_frame": round(n * t_ms / agent_cost, 2) if has_teacher and agent_cost else None,
            "scene_cuts": s["scene_cuts"],
            "carried_fraction_mean": round(s["carried_fraction_sum"] / n, 4) if n else 0.0,
            "final_stride": s["stride"] if n else None,
            "teacher_state": s["teacher_state"],
            "bytes_up": s["bytes_up"],
            "bytes_down": s["bytes_down"],
            "bytes_up_per_teacher_frame": round(s["bytes_up"] / tf) if tf else None,
            "bytes_down_per_teacher_frame": round(s["bytes_down"] / tf) if tf else None,
        }


def _median(values: collections.deque[float]) -> float:
    return float(np.median(values)) if values else float("nan")
