"""COCO-format instance masks become the label maps the teacher would send."""
import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from export.coco import (
    CocoDataset,
    CocoLayoutError,
    annotation_mask,
    decode_rle,
    polygon_mask,
    rle_counts_from_string,
)
from core.groups import GroupError
from tests.export.coco_fixture import CATEGORIES, SEQUENCES, compressed_rle, davis_mask, polygons_of, write_coco

# pycocotools (the reference here, never a dependency of export/) warns under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory, davis_root):
    root = tmp_path_factory.mktemp("coco") / "davis-coco"
    written = write_coco(root, frames=(10, 20))
    return root, written


def test_polygon_masks_round_trip_the_human_masks(coco_root):
    root, written = coco_root
    ds = CocoDataset(root, ["person", "dog"])
    by_name = {img.path.name: i for i, img in enumerate(ds.images)}
    checked = 0
    for item in written:
        if item.encoding != "polygon":
            continue
        labels = ds.labels(by_name[item.file_name])
        expected = 1 if SEQUENCES[item.sequence][0] == "person" else 2
        assert set(np.unique(labels)) <= {0, expected}
        assert _iou(labels == expected, item.mask) > 0.95
        checked += 1
    assert checked == 4


def test_rle_masks_list_and_compressed_are_exact(coco_root):
    root, written = coco_root
    ds = CocoDataset(root, ["person", "auto"])
    by_name = {img.path.name: i for i, img in enumerate(ds.images)}
    encodings = set()
    for item in written:
        if item.encoding.startswith("rle"):
            labels = ds.labels(by_name[item.file_name])
            np.testing.assert_array_equal(labels > 0, item.mask)
            encodings.add(item.encoding)
    assert encodings == {"rle", "rle-compressed"}


def test_compressed_rle_decoder_matches_pycocotools():
    for seq, frame in (("kite-surf", 5), ("horsejump-high", 30), ("blackswan", 0)):
        mask = davis_mask(seq, frame)
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = rle_counts_from_string(rle["counts"])
        assert sum(counts) == mask.size
        np.testing.assert_array_equal(decode_rle(rle), coco_mask.decode(rle).astype(bool))
        np.testing.assert_array_equal(decode_rle({"size": rle["size"], "counts": counts}), mask)


def test_polygon_raster_agrees_with_coco_rasteriser():
    mask = davis_mask("dog", 40)
    h, w = mask.shape
    polys = polygons_of(mask)
    ref = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polys, h, w))).astype(bool)
    assert _iou(polygon_mask(polys, h, w), ref) > 0.95
    # Pixel centres are at +0.5: the square [2, 6) x [1, 4) covers columns 2..5, rows 1..3.
    square = polygon_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8)
    assert square.sum() == 12 and square[1:4, 2:6].all()


def test_bad_masks_say_what_is_wrong():
    with pytest.raises(ValueError, match="cover"):
        decode_rle({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match="truncated"):
        rle_counts_from_string("P")  # 'P' - 48 = 0x20: "more groups follow", then nothing
    mask = davis_mask("dog", 0)
    with pytest.raises(ValueError, match="image is 100x100"):
        annotation_mask(compressed_rle(mask), 100, 100)


def test_groups_merge_coco_classes_and_drop_the_rest(coco_root):
    root, written = coco_root
    ds = CocoDataset(root, ["person", "auto"])
    seqs = {img.path.name.rsplit("_", 1)[0] for img in ds.images}
    assert seqs == {"breakdance", "kite-surf", "car-shadow"}  # dog images hold no requested class
    assert ds.num_classes == 3
    for i, img in enumerate(ds.images):
        labels = ds.labels(i)
        expected = 2 if img.path.name.startswith("car-shadow") else 1  # car -> auto
        assert set(np.unique(labels)) == {0, expected}
    sample = ds[0]
    assert sample.image.dtype == np.uint8 and sample.image.shape == (480, 854, 3)
    assert sample.boxes.shape == (1, 4)
    with_empty = CocoDataset(root, ["person", "auto"], include_empty=True)
    assert len(with_empty) == len(written)
    dog = [i for i, img in enumerate(with_empty.images) if img.path.name.startswith("dog")]
    assert dog and all(with_empty.labels(i).max() == 0 for i in dog)
    assert len(CocoDataset(root, ["auto"], max_images=1)) == 1


def test_overlapping_instances_smaller_on_top_whatever_the_order(tmp_path, davis_root):
    person = davis_mask("breakdance", 10)
    ys, xs = np.nonzero(person)
    cy, cx = int(ys.mean()), int(xs.mean())
    assert person[cy - 20:cy + 20, cx - 20:cx + 20].mean() > 0.5  # the car below overlaps the person
    small = [cx - 20, cy - 20, cx + 20, cy - 20, cx + 20, cy + 20, cx - 20, cy + 20]
    for order in (0, 1):
        root = tmp_path / f"order{order}"
        car = {"id": 1 if order else 9999, "image_id": 1, "category_id": CATEGORIES["car"],
               "segmentation": [small], "bbox": [cx - 20, cy - 20, 40, 40], "iscrowd": 0}
        write_coco(root, frames=(10,), sequences={"breakdance": ("person", "polygon")}, extra_annotations=[car])
        if order:  # the car first in the file
            path = root / "annotations" / "instances_mini.json"
            blob = json.loads(path.read_text())
            blob["annotations"].reverse()
            path.write_text(json.dumps(blob))
        labels = CocoDataset(root, ["person", "auto"]).labels(0)
        assert (labels[cy - 19:cy + 19, cx - 19:cx + 19] == 2).all()
        assert _iou(labels == 1, person & ~polygon_mask([small], *person.shape)) > 0.95


def test_layout_errors_say_what_was_expected(tmp_path, coco_root):
    root, _ = coco_root
    with pytest.raises(CocoLayoutError, match="annotations/"):
        CocoDataset(tmp_path, ["person"])
    two = tmp_path / "two"
    shutil.copytree(root, two)
    shutil.copy(two / "annotations" / "instances_mini.json", two / "annotations" / "instances_other.json")
    with pytest.raises(CocoLayoutError, match="--split"):
        CocoDataset(two, ["person"])
    assert len(CocoDataset(two, ["person"], split="mini")) == 4
    shutil.move(two / "mini", two / "elsewhere")
    with pytest.raises(CocoLayoutError, match="images/"):
        CocoDataset(two, ["person"], split="mini")
    assert len(CocoDataset(two, ["person"], split="mini", images=two / "elsewhere")) == 4
    # DIR/images/ with an explicit annotation file also works.
    shutil.move(two / "elsewhere", two / "images")
    assert len(CocoDataset(two, ["person"], annotations=two / "annotations" / "instances_other.json")) == 4
    with pytest.raises(GroupError, match="unknown class group"):
        CocoDataset(root, ["pedestrian"])
    with pytest.raises(CocoLayoutError, match="none of the categories"):
        CocoDataset(root, ["horse"])
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "instances_x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(CocoLayoutError, match="'annotations'"):
        CocoDataset(bad, ["person"])
