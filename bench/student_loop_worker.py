"""One timed pass of the agent loop, for bench/student_loop.py (run as a script, in any commit's tree).

Usage: python student_loop_worker.py LABELS.npz ARTIFACTS THREADS -> one JSON line.
It imports the agent the way that commit lays it out (before and after the
core/ layer existed), so one benchmark compares two versions of the code.
The teacher is that tree's own CachedTeacher (evaluation.teacher_labels, once
sdk.evaluation.teacher_labels), given label maps only: every tree since the
evaluations exist answers those the same way (boxes from the label map's
regions), so both sides of a comparison train on identical answers.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def _imports():
    from edge_agent.agent import DistillationAgent
    from edge_agent.trainer import load_trainer

    try:  # the tree before the core/ layer (tried first: the installed package may provide core/)
        from edge_agent.config import DistillConfig
        from edge_agent.metrics import mean_iou
    except ImportError:
        from core.config import DistillConfig
        from core.metrics import mean_iou
    try:  # the evaluations' home before they left sdk/ (tried first, for the same reason)
        from sdk.evaluation.teacher_labels import CachedTeacher
    except ImportError:
        from evaluation.teacher_labels import CachedTeacher
    return DistillationAgent, load_trainer, DistillConfig, CachedTeacher, mean_iou


def main() -> None:
    labels_path, artifacts, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    DistillationAgent, load_trainer, DistillConfig, CachedTeacher, mean_iou = _imports()
    data = np.load(labels_path)
    frames, maps = data["frames"], data["maps"]
    groups = json.loads(str(data["groups"]))
    trainer = load_trainer(artifacts, threads=threads)
    forwards = [0]
    predict = trainer.predict

    def counting_predict(image):
        forwards[0] += 1
        return predict(image)

    trainer.predict = counting_predict
    teacher = CachedTeacher(list(maps), groups, model_name="memory")
    agent = DistillationAgent(trainer, teacher, DistillConfig(accuracy_threshold=0.8))
    agent.process(0, frames[0])  # warm-up (first run at this size), not timed
    ious = []
    start = time.perf_counter()
    for i in range(1, len(frames)):
        r = agent.process(i, frames[i])
        ious.append(mean_iou(r.labels, maps[i], len(groups) + 1))
    wall = time.perf_counter() - start
    n = len(frames) - 1
    counters = getattr(agent, "counters", agent)  # trees before edge_agent/counters.py counted on the agent
    print(json.dumps({"fps": round(n / wall, 3), "frames": n, "teacher_frames": teacher.calls,
                      "updates": counters.updates, "mean_iou": round(float(np.mean(ious)), 4),
                      "forwards_per_frame": round(forwards[0] / len(frames), 3)}))


if __name__ == "__main__":
    main()
