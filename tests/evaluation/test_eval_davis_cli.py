"""`jitnet eval davis` on real DAVIS sequences with human ground truth, configurations A and C.

The data is a DAVIS-layout folder made of two real sequences, one under a new
name, to show that any sequence folder in that layout works.  Frames are
scaled down and the update budget is small so the test stays CPU-sized.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli.main import main
from evaluation.davis_eval import adapt, mask_box

N_FRAMES = 20


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, davis_root):
    root = tmp_path_factory.mktemp("davis")
    for source, name in (("car-shadow", "car-shadow"), ("blackswan", "my-swan")):
        for kind in ("JPEGImages", "Annotations"):
            (root / kind / name).mkdir(parents=True)
            files = sorted((davis_root / kind / source).iterdir())[:N_FRAMES]
            for f in files:
                (root / kind / name / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def object_artifacts(tmp_path_factory):
    from export.artifacts import generate

    out = tmp_path_factory.mktemp("artifacts") / "object"
    generate(out, class_names=["object"], width=0.5, height_px=128, width_px=224, seed=0)
    return out


def _davis(root, artifacts, config, out):
    argv = ["eval", "davis", "--root", str(root), "--config", config, "--artifacts", str(artifacts),
            "--scale", "0.25", "--max-updates", "12", "--json", str(out), "--no-plot"]
    assert main(argv) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("config, annotated", [("A", [0]), ("C", [0, 16])])
def test_davis_configuration_scores_every_sequence(small_root, object_artifacts, tmp_path, config, annotated):
    report = _davis(small_root, object_artifacts, config, tmp_path / f"davis-{config}.json")
    assert report["config"] == config
    assert sorted(report["sequences"]) == ["car-shadow", "my-swan"]
    for name, r in report["sequences"].items():
        for key in ("J_mean", "J_recall", "F_mean", "F_recall"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
        for key in ("J_decay", "F_decay"):
            assert -1.0 <= r[key] <= 1.0, (name, key)
        assert r["frames"] == N_FRAMES and len(r["J_frames"]) == N_FRAMES - 2  # first and last not scored
        assert r["annotated_frames"] == annotated
        assert 0 < r["updates"] <= 12 * len(annotated)
        # training on the annotated frame made the student agree with the human mask there
        first = r["adaptations"][0]
        assert first["iou_after"] > first["iou_before"]
        # Measured at this size and budget: J 0.6-0.9.  A student that learnt nothing scores ~0.
        assert r["J_mean"] > 0.3, name
    for key in ("J_mean", "F_mean"):
        assert report[key] == pytest.approx(np.mean([r[key] for r in report["sequences"].values()]))
    md = (tmp_path / f"davis-{config}.md").read_text()
    assert "| Sequence | J mean | J recall | J decay | F mean | F recall | F decay |" in md
    assert f"Paper (JITNet, config {config}" in md and "my-swan" in md
    assert report["student"]["how"] == "--artifacts"


def test_adapt_stops_at_the_threshold_or_the_budget(object_artifacts, davis_root):
    from conftest import load_davis_frame
    from core.geometry import Geometry
    from edge_agent.trainer import load_trainer
    from core.targets import box_weights

    frame, mask = load_davis_frame("blackswan", 0)
    geo = Geometry.for_frame(frame.shape[:2], 0.25)
    trainer = load_trainer(object_artifacts)
    image, target = geo.image(frame), geo.labels(mask.astype(np.uint8))
    weights = geo.weights(box_weights(mask.shape, [mask_box(mask)]))
    updates, before, after = adapt(trainer, image, target, weights, geo.scaled_hw, threshold=1.0, max_updates=5)
    assert updates == 5 and after > before
    # a threshold already met takes no step at all
    assert adapt(trainer, image, target, weights, geo.scaled_hw, threshold=after * 0.5, max_updates=5)[0] == 0
    assert mask_box(np.zeros((4, 4), bool)) is None
