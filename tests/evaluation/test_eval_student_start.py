"""Where an evaluation's student comes from (--artifacts / --init; the one artifact cache), and the cached teacher's boxes."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import load_davis_frame

from evaluation.student import resolve_start
from evaluation.teacher_labels import CachedTeacher, boxes_from_labels, teacher_gflops


def test_init_checkpoint_is_exported_once_and_reported(tmp_path, monkeypatch):
    from export.jitnet import build_jitnet, save_student

    monkeypatch.setenv("JITNET_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "student.pt"
    save_student(build_jitnet(0.5, 2, seed=3), ckpt)
    start = resolve_start(["object"], init=ckpt)
    assert start.how == "--init" and start.init == ckpt
    assert start.artifacts.parent == tmp_path / "cache" / "artifacts"
    info = start.to_dict()
    assert info["from_init"] is True and info["manifest"].endswith("manifest.json")
    assert info["class_names"] == ["background", "object"]
    # the exported weights are the checkpoint's, not a fresh random init
    weights = np.load(start.artifacts / "initial_weights.npz")
    model = build_jitnet(0.5, 2, seed=3).state_dict()
    name = next(k for k in model if k.endswith("weight") and model[k].ndim == 4)
    np.testing.assert_array_equal(weights[name], model[name].numpy())
    stamp = (start.artifacts / "manifest.json").stat().st_mtime_ns
    again = resolve_start(["object"], init=ckpt)
    assert again.artifacts == start.artifacts
    assert (again.artifacts / "manifest.json").stat().st_mtime_ns == stamp  # not exported twice


def test_the_sdk_and_the_evaluations_share_one_export_per_checkpoint(tmp_path, monkeypatch):
    from export.jitnet import build_jitnet, save_student
    from sdk.artifact_cache import default_artifacts

    monkeypatch.setenv("JITNET_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "student.pt"
    save_student(build_jitnet(0.5, 2, seed=3), ckpt, classes=["person"])
    evaluated = resolve_start(["person"], init=ckpt).artifacts
    stamp = (evaluated / "manifest.json").stat().st_mtime_ns
    assert default_artifacts(["person"], 0.5, ckpt) == evaluated  # what `jitnet run --init` would use
    assert (evaluated / "manifest.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache" / "artifacts").iterdir()] == [evaluated.name]
    with pytest.raises(Exception, match="width"):  # a checkpoint of another width is refused, not re-keyed
        default_artifacts(["person"], 0.25, ckpt)


def test_checkpoint_for_other_classes_gets_a_fresh_channel_or_a_new_head_when_asked(tmp_path, monkeypatch):
    from export.jitnet import build_jitnet, save_student

    monkeypatch.setenv("JITNET_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "coco.pt"
    model = build_jitnet(0.5, 3, seed=1)
    save_student(model, ckpt, classes=["person", "auto"])
    old = model.logits.weight.detach().numpy()
    fresh = np.load(resolve_start(["object"], init=ckpt).artifacts / "initial_weights.npz")["logits.weight"]
    np.testing.assert_array_equal(fresh[0], old[0])  # the background channel is kept
    assert not any(np.allclose(fresh[1], row) for row in old[1:])  # "object" was never learnt: a fresh channel
    start = resolve_start(["object"], init=ckpt, new_head=True)
    weights = np.load(start.artifacts / "initial_weights.npz")
    assert weights["logits.weight"].shape[0] == 2
    np.testing.assert_allclose(weights["logits.weight"][0], old[0])
    np.testing.assert_allclose(weights["logits.weight"][1], old[1:].mean(0), rtol=1e-6)
    # the rest of the network is the checkpoint's
    np.testing.assert_array_equal(weights["stem2.0.weight"], model.state_dict()["stem2.0.weight"].numpy())


def test_artifacts_for_other_classes_are_refused(artifacts):
    with pytest.raises(ValueError, match="exported for classes"):
        resolve_start(["person", "auto"], artifacts=artifacts)
    with pytest.raises(ValueError, match="not both"):
        resolve_start(["person"], artifacts=artifacts, init=artifacts / "x.pt")


def test_cached_teacher_answers_with_boxes_around_each_region():
    _, mask = load_davis_frame("car-shadow", 0)
    labels = mask.astype(np.uint8)
    labels[:40, :60] = 2  # a second group, apart from the car
    teacher = CachedTeacher([labels], ["car", "sign"])
    answer = teacher.label(None, ["car", "sign"], frame_index=0)
    assert teacher.calls == 1 and answer.label_map is labels
    ys, xs = np.nonzero(mask)
    car = [i.box for i in answer.instances if i.group_index == 1]
    assert (min(b[0] for b in car), min(b[1] for b in car)) == (xs.min(), ys.min())
    assert (max(b[2] for b in car), max(b[3] for b in car)) == (xs.max() + 1, ys.max() + 1)
    assert [i.box for i in answer.instances if i.group_index == 2] == [(0.0, 0.0, 60.0, 40.0)]
    assert boxes_from_labels(np.zeros((8, 8), np.uint8)) == []
    with pytest.raises(ValueError, match="groups"):
        teacher.label(None, ["person"], frame_index=0)


def test_teacher_flops_scale_with_the_letterboxed_input():
    full = teacher_gflops("yolov5s-seg", (640, 640))
    assert full["gflops"] == pytest.approx(26.36)
    assert teacher_gflops("yolov5s-seg", (288, 384))["gflops"] == pytest.approx(26.36 * 480 / 640)
    assert teacher_gflops("some-server-model", (288, 384)) is None
