"""The agent loop alone: frames/s of the student with the teacher's labels precomputed.

Replay mode, threshold 0.8, the teacher answered from memory, so what is timed
is only the device side (validation, geometry, inference, targets, updates,
the stride controller). With ``--baseline-ref`` the same loop also runs on
another commit of this repository, checked out into a git worktree, and the
two alternate in one run, so the ratio is measured side by side on one machine.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from bench.machine import cpu_model

WORKER = Path(__file__).with_name("student_loop_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[1]


def precompute_labels(frames: list, groups: list[str], teacher: str, out: Path) -> None:
    """The teacher's label map of every frame, in a file the worker of any commit can read."""
    import numpy as np

    from teacher_server.labeler import Labeler

    labeler = Labeler.from_name(teacher)
    maps = [labeler.label(f, groups).label_map for f in frames]
    np.savez_compressed(out, frames=np.stack(frames), maps=np.stack(maps), groups=json.dumps(groups))


def _run_worker(tree: Path, labels: Path, artifacts: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, str(WORKER), str(labels), str(artifacts), str(threads)],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"the student loop failed in {tree}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True, text=True)
    return where


def compare(frames: list, groups: list[str], *, teacher: str, artifacts: Path, baseline_ref: Optional[str],
            repeats: int, threads: int) -> dict[str, Any]:
    """Alternate the loop on this tree and on ``baseline_ref``; frames/s per run and the ratio of medians."""
    with tempfile.TemporaryDirectory(prefix="jitnet-student-loop-") as tmp:
        labels = Path(tmp) / "labels.npz"
        precompute_labels(frames, groups, teacher, labels)
        trees = {"this tree": REPO_ROOT}
        if baseline_ref:
            trees[f"baseline {baseline_ref}"] = _worktree(baseline_ref, Path(tmp) / "baseline")
        try:
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for _ in range(repeats):
                for name, tree in trees.items():
                    runs[name].append(_run_worker(tree, labels, artifacts, threads))
        finally:
            if baseline_ref:
                subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force",
                                str(trees[f"baseline {baseline_ref}"])], capture_output=True)
    rows = []
    for name, rs in runs.items():
        fps = [r["fps"] for r in rs]
        rows.append({"code": name, "fps_runs": fps, "fps_median": round(statistics.median(fps), 2),
                     "teacher_frames": rs[0]["teacher_frames"], "updates": rs[0]["updates"],
                     "mean_iou": rs[0]["mean_iou"], "forwards_per_frame": rs[0].get("forwards_per_frame")})
    report: dict[str, Any] = {"frames": len(frames), "threshold": 0.8, "threads": threads,
                              "cpu": cpu_model(), "platform": platform.platform(), "rows": rows}
    if baseline_ref:
        report["speedup_vs_baseline"] = round(rows[0]["fps_median"] / rows[1]["fps_median"], 3)
    return report
