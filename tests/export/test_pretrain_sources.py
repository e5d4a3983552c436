"""Pre-training sources read the real files in ../shared/data as their formats say, and the
class-flexible checkpoint keeps every group's head channel when the class list changes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from export.datasets import open_source
from export.jitnet import CheckpointError, build_jitnet, load_student, load_student_start, save_student

DATA = Path(os.environ.get("JITNET_DATA_ROOT", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
GROUPS = ["person", "auto", "bike", "animal"]


def _need(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} not found: this test reads the workspace's ../shared/data/{folder} "
                    "(or set JITNET_DATA_ROOT to a folder holding it)")
    return path


def _index_of(source, name: str) -> int:
    return next(i for i, (path, *_rest) in enumerate(source.items) if path.name == name)


def test_yolo_seg_reads_the_instances_and_classes_of_a_known_coco128_image():
    root = _need("coco128-seg")
    # labels/train2017/000000000061.txt: three people (class 0) and two elephants (class 20).
    source = open_source(f"yolo-seg:{root}", GROUPS)
    i = _index_of(source, "000000000061.jpg")
    assert sorted(inst.class_id for inst in source.instances(i)) == [0, 0, 0, 20, 20]
    sample = source[i]
    assert len(sample.boxes) == 5
    assert set(np.unique(sample.labels)) == {0, GROUPS.index("person") + 1, GROUPS.index("animal") + 1}
    # A group the run does not ask for is background: with person only, the elephants vanish.
    only = open_source(f"yolo-seg:{root}", ["person"])
    assert set(np.unique(only[_index_of(only, "000000000061.jpg")].labels)) == {0, 1}


def test_camvid_maps_car_to_auto_and_ignores_unlabelled():
    root = _need("camvid")
    source = open_source(f"camvid:{root},split=train,max=5", GROUPS)
    image, label = source.items[0]
    raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    sample = source[0]
    assert sample.image.shape[:2] == raw.shape
    car = raw == 8
    assert car.any(), "the first CamVid training frame has cars"
    assert (sample.labels[car] == GROUPS.index("auto") + 1).all()
    assert (sample.labels[raw == 3] == 0).all()  # road is background
    if (raw == 11).any():
        assert not sample.valid[raw == 11].any()  # "unlabelled" trains nothing


def test_the_class_flexible_head_keeps_the_logits_of_shared_groups(tmp_path):
    model = build_jitnet(0.5, len(GROUPS) + 1, seed=3)
    path = tmp_path / "student.pt"
    save_student(model, path, classes=GROUPS)
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        before = model.eval()(x)
    subset, start = load_student_start(path, classes=["auto", "person", "cat"])
    assert start.trained == ("auto", "person") and start.fresh == ("cat",)
    with torch.no_grad():
        after = subset.eval()(x)
    for k_new, name in enumerate(["background", "auto", "person"]):
        k_old = ["background", *GROUPS].index(name)
        torch.testing.assert_close(after[:, k_new], before[:, k_old], rtol=0, atol=0)
    assert not torch.equal(after[:, 3], before[:, GROUPS.index("bike") + 1])


def test_a_corrupt_checkpoint_is_a_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "student.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_student(bad, classes=["person"])
    out = subprocess.run([sys.executable, "-m", "cli.main", "export", "--init", str(bad), "--out",
                          str(tmp_path / "art")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and str(bad) in lines[0] and "--init" in lines[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "art").exists()
