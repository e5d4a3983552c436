"""`jitnet bench fleet`: cameras sharing one teacher in video time, fair vs need, numbers in range."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bench.fleet import SharedTeacher
from core.need import NeedSignal

CAMERAS, FRAMES, CAPACITY = 3, 60, 0.1


@pytest.mark.parametrize("policy", ["fair", "need"])
def test_shared_teacher_never_serves_more_than_its_capacity(policy):
    """Three cameras always asking; 0.3 answers per tick: at most 0.3 * ticks + 1 answers, in the policy's order."""
    teacher = SharedTeacher(policy, 0.3, max_wait_s=5.0)
    answered = []
    for tick in range(200):
        now = tick / 10
        teacher.tick(now)
        for cam, acc in (("a", 0.2), ("b", 0.5), ("c", 0.9)):
            if teacher.queue.depth(cam) == 0:
                fut = teacher.submit(cam, tick, NeedSignal(acc, 0.8, stride=8, frames_since_teacher=8), now,
                                     lambda stretch, cam=cam: (cam, stretch))
                fut.add_done_callback(lambda f: answered.append(f.result()))
    assert teacher.served == len(answered) <= int(0.3 * 200) + 1
    assert teacher.served >= int(0.3 * 200) - 1  # always saturated: the capacity is used
    counts = {c: sum(1 for a, _ in answered if a == c) for c in "abc"}
    if policy == "fair":
        assert max(counts.values()) - min(counts.values()) <= 1
    else:
        # the neediest camera gets most; the satisfied one still gets answers (aging bound 5 s = 50 ticks)
        assert counts["a"] > counts["b"] >= counts["c"] >= 1
        assert max(teacher.waits["c"]) <= 5.0 + 0.5
        assert any(s > 1.0 for c, s in answered if c == "c")  # saturated: the passing camera was told to stretch
        assert all(s == 1.0 for c, s in answered if c in "ab")  # the failing ones never are


@pytest.mark.slow
def test_bench_fleet_runs_both_policies_on_three_cameras(tmp_path, artifacts):
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "fleet", "--cameras", str(CAMERAS), "--clips", "vtest",
         "--frames", str(FRAMES), "--offset-step", "5", "--scale", "0.25", "--classes", "person",
         "--teacher", "embedded:yolov5s-seg", "--cache", str(tmp_path / "labels"), "--capacity", str(CAPACITY),
         "--max-updates", "4", "--artifacts", str(artifacts), "--json", str(out)],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"fair", "need"}
    assert report["cameras"] == CAMERAS and report["frames_per_camera"] == FRAMES
    assert report["capacity_share"] == pytest.approx(CAPACITY)
    assert report["setup"]["clips"]["vtest"]["offsets"] == [0, 5, 10]
    capacity_frames = CAPACITY * CAMERAS * FRAMES
    for policy, run in report["runs"].items():
        rows, overall = run["cameras"], run["overall"]
        assert [r["camera"] for r in rows] == ["cam0-vtest@0", "cam1-vtest@5", "cam2-vtest@10"]
        for r in rows:
            assert r["frames"] == FRAMES
            assert 0.0 <= r["mean_iou"] <= 1.0, (policy, r)
            assert r["teacher_frames"] >= 1, (policy, r)          # nobody starves
            assert 0.0 <= r["wait_mean_s"] <= r["wait_max_s"] <= FRAMES / report["fps"]
            assert r["updates"] <= 4 * r["teacher_frames"]
        # the teacher's capacity bounds every policy; answers still in flight at the end are not learnt from
        assert overall["teacher_frames"] <= overall["teacher_answers"] <= capacity_frames + 1
        assert overall["teacher_answers"] >= capacity_frames / 2, overall
        assert overall["mean_iou"] == pytest.approx(sum(r["mean_iou"] for r in rows) / CAMERAS, abs=1e-3)
        assert overall["worst_iou"] == min(r["mean_iou"] for r in rows)
    d = report["need_minus_fair"]
    assert -1.0 <= d["mean_iou"] <= 1.0 and -1.0 <= d["worst_iou"] <= 1.0
    assert len(re.findall(r"^\| cam\d", out.with_suffix(".md").read_text(), flags=re.M)) == CAMERAS
    assert out.with_suffix(".png").stat().st_size > 1000
