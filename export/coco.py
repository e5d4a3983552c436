"""COCO-format instance segmentation, read as semantic label maps for the student.

Pre-training (the paper pre-trains JITNet on COCO before going online) needs
the same label maps the teacher sends: 0 = background, k = the k-th requested
class group.  Instance masks of every COCO class in a group are merged into
that group's label.  Where instances overlap, the smaller one is drawn last
and wins (ground truth has no scores to order by; small objects are the ones
that vanish otherwise).

Masks are decoded here in numpy, with COCO's conventions: polygons in
continuous coordinates where pixel (x, y) covers [x, x+1) x [y, y+1), and
RLE counts in column-major order, either as a list or as COCO's compressed
string.  No pycocotools needed.

Expected layout (the one COCO ships)::

    DIR/annotations/instances_<split>.json
    DIR/<split>/<file_name>     or   DIR/images/<file_name>   or   DIR/images/<split>/<file_name>
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np

from core.groups import GroupSpec, resolve_groups

log = logging.getLogger(__name__)


class CocoLayoutError(ValueError):
    """The dataset folder or annotation file is not what a COCO reader expects."""


# --------------------------------------------------------------------------
# Mask decoding
# --------------------------------------------------------------------------

def rle_counts_from_string(counts: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (maskApi.c ``rleFrString``) into run lengths.

    Each count is stored in 5-bit groups offset by 48 ('0'), bit 0x20 meaning
    "more groups follow" and bit 0x10 of the last group the sign; from the
    third count on, the value is a delta to the count two places before.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated compressed RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """bool (H, W) mask from a COCO RLE dict ``{"size": [H, W], "counts": list | str}``.

    Runs alternate background/foreground starting with background, over the
    image in column-major (Fortran) order.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"an RLE needs 'size': [H, W] and 'counts', got keys {sorted(rle)}") from None
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError("RLE has negative run lengths")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels, but its size {h}x{w} has {h * w}")
    values = (np.arange(runs.size) % 2).astype(bool)
    flat = np.repeat(values, runs)
    return np.ascontiguousarray(flat.reshape(w, h).T)


def polygon_mask(polygons: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """bool (H, W) mask: the union of COCO polygons ``[x0, y0, x1, y1, ...]``.

    A pixel is inside when its centre (x + 0.5, y + 0.5) is (even-odd rule),
    which is how COCO's own rasteriser treats polygon coordinates.  Scanline
    fill in numpy: one crossing per edge per pixel row.
    """
    diff = np.zeros((height, width + 1), np.int32)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(xy) < 3:
            continue  # degenerate: COCO has a few 2-point "polygons"
        _scanline(xy, height, width, diff)
    return np.cumsum(diff[:, :width], axis=1) > 0


def _scanline(xy: np.ndarray, height: int, width: int, diff: np.ndarray) -> None:
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    keep = y0 != y1
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows whose centre r + 0.5 lies in [lo, hi): half-open, so a vertex
    # shared by two edges is crossed once.
    first = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)
    n = np.maximum(stop - first, 0)
    if n.sum() == 0:
        return
    edge = np.repeat(np.arange(len(n)), n)
    offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    rows = first[edge] + offsets
    yc = rows + 0.5
    xs = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # Every row has an even number of crossings (closed polygon), so global
    # alternation pairs crossings within rows.
    r, xa, xb = rows[0::2], xs[0::2], xs[1::2]
    # Pixel c is inside when xa <= c + 0.5 < xb.
    ca = np.clip(np.ceil(xa - 0.5), 0, width).astype(np.int64)
    cb = np.clip(np.ceil(xb - 0.5), 0, width).astype(np.int64)
    ok = cb > ca
    np.add.at(diff, (r[ok], ca[ok]), 1)
    np.add.at(diff, (r[ok], cb[ok]), -1)


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool (H, W) mask of one COCO annotation's ``segmentation`` (polygons or RLE)."""
    if isinstance(segmentation, Mapping):
        mask = decode_rle(segmentation)
        if mask.shape != (height, width):
            raise ValueError(f"RLE is {mask.shape[0]}x{mask.shape[1]} but its image is {height}x{width}")
        return mask
    if isinstance(segmentation, (list, tuple)):
        if segmentation and isinstance(segmentation[0], Mapping):  # a list of RLEs: union
            out = np.zeros((height, width), bool)
            for part in segmentation:
                out |= annotation_mask(part, height, width)
            return out
        return polygon_mask(segmentation, height, width)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}; expected polygons or RLE")


# --------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class CocoObject:
    """One annotation of a requested group."""

    label: int  # 1-based group index
    segmentation: Any
    bbox: tuple[float, float, float, float]  # COCO x, y, w, h
    annotation_id: int

    def box_xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: Path
    height: int
    width: int
    objects: tuple[CocoObject, ...]


@dataclass(frozen=True)
class CocoSample:
    """What training needs from one image: pixels, semantic labels, object boxes."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    labels: np.ndarray  # uint8 (H, W), 0 = background, k = group k
    boxes: np.ndarray  # float32 (N, 4) x0, y0, x1, y1 of the group objects


def _normalise(name: str) -> str:
    # The same spellings resolve_groups accepts ("traffic_light", "Traffic-Light").
    return " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())


def find_annotation_file(root: Path | str, split: Optional[str] = None) -> Path:
    """``root/annotations/instances_<split>.json``; the only one when ``split`` is None."""
    root = Path(root)
    folder = root / "annotations"
    if not root.is_dir():
        raise CocoLayoutError(f"{root} is not a directory; pass the COCO dataset folder (with annotations/ inside)")
    if not folder.is_dir():
        raise CocoLayoutError(
            f"no annotations/ folder in {root}; expected {folder}/instances_<split>.json "
            "(COCO's layout), or pass the file with --annotations"
        )
    if split is not None:
        path = folder / f"instances_{split}.json"
        if not path.is_file():
            raise CocoLayoutError(f"{path} does not exist; found {sorted(p.name for p in folder.glob('instances_*.json'))}")
        return path
    found = sorted(folder.glob("instances_*.json"))
    if not found:
        raise CocoLayoutError(
            f"no instances_*.json in {folder}; expected COCO instance annotations such as "
            "instances_train2017.json, or pass the file with --annotations"
        )
    if len(found) > 1:
        raise CocoLayoutError(
            f"several annotation files in {folder}: {', '.join(p.name for p in found)}; "
            "choose one with --split (e.g. train2017) or --annotations FILE"
        )
    return found[0]


def _split_of(annotation_file: Path) -> Optional[str]:
    stem = annotation_file.stem
    return stem[len("instances_"):] if stem.startswith("instances_") else None


def image_folders(root: Path, annotation_file: Path, images: Optional[Path] = None) -> list[Path]:
    """Where image ``file_name``s may live, in the order they are tried."""
    if images is not None:
        return [Path(images)]
    split = _split_of(annotation_file)
    candidates = [root / split, root / "images" / split] if split else []
    candidates += [root / "images", root]
    return [c for c in candidates if c.is_dir()]


class CocoDataset:
    """The images of a COCO-format dataset that hold the requested class groups.

    ``groups`` are class-group names as cameras request them (``person``,
    ``auto``, any COCO class name): see :func:`core.groups.resolve_groups`.
    Images with none of them are dropped unless ``include_empty``; they only
    teach "background", which most pixels already do.
    """

    def __init__(
        self,
        root: Path | str,
        groups: Sequence[str],
        *,
        annotations: Path | str | None = None,
        images: Path | str | None = None,
        split: Optional[str] = None,
        include_empty: bool = False,
        max_images: Optional[int] = None,
    ):
        self.root = Path(root)
        self.spec: GroupSpec = resolve_groups(list(groups))
        self.annotation_file = Path(annotations) if annotations else find_annotation_file(self.root, split)
        if not self.annotation_file.is_file():
            raise CocoLayoutError(f"annotation file {self.annotation_file} does not exist")
        self.folders = image_folders(self.root, self.annotation_file, Path(images) if images else None)
        blob = self._read_json(self.annotation_file)
        self.category_labels = self._map_categories(blob["categories"])
        self.images = self._index(blob, include_empty, max_images)
        if not self.images:
            raise CocoLayoutError(
                f"no image in {self.annotation_file} has an annotation of {list(self.spec.names)}; "
                "check --classes, or pass --include-empty to train on background only"
            )
        self._check_first_image()
        log.info("%s: %d images with %s", self.annotation_file, len(self.images), ", ".join(self.spec.names))

    # -- construction ---------------------------------------------------
    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            blob = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CocoLayoutError(f"cannot read {path} as JSON ({exc})") from exc
        missing = [k for k in ("images", "annotations", "categories") if k not in blob]
        if not isinstance(blob, dict) or missing:
            raise CocoLayoutError(
                f"{path} is not a COCO instances file: missing {missing}; it needs 'images', "
                "'annotations' and 'categories' lists"
            )
        return blob

    def _map_categories(self, categories: list[dict]) -> dict[int, int]:
        """COCO category id -> 1-based group label, for categories in a requested group."""
        wanted = self.spec.class_to_index()
        mapping = {int(c["id"]): wanted[_normalise(c["name"])] for c in categories if _normalise(c["name"]) in wanted}
        covered = {label for label in mapping.values()}
        for k, name in enumerate(self.spec.names, start=1):
            if k not in covered:
                log.warning("no category of group %r (%s) in %s", name, ", ".join(self.spec.classes[k - 1]),
                            self.annotation_file)
        if not mapping:
            names = sorted(_normalise(c["name"]) for c in categories)
            raise CocoLayoutError(
                f"none of the categories in {self.annotation_file} ({', '.join(names[:20])}"
                f"{', ...' if len(names) > 20 else ''}) belongs to the groups {list(self.spec.names)}; "
                "category names must be COCO class names (person, car, dog, ...)"
            )
        return mapping

    def _index(self, blob: dict, include_empty: bool, max_images: Optional[int]) -> list[CocoImage]:
        per_image: dict[int, list[CocoObject]] = {}
        for ann in blob["annotations"]:
            label = self.category_labels.get(int(ann["category_id"]))
            if label is None or not ann.get("segmentation"):
                continue
            bbox = tuple(float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
            per_image.setdefault(int(ann["image_id"]), []).append(
                CocoObject(label, ann["segmentation"], bbox, int(ann.get("id", 0)))
            )
        out: list[CocoImage] = []
        for img in sorted(blob["images"], key=lambda r: int(r["id"])):
            objects = per_image.get(int(img["id"]), [])
            if not objects and not include_empty:
                continue
            out.append(CocoImage(int(img["id"]), Path(img["file_name"]), int(img["height"]), int(img["width"]),
                                 tuple(objects)))
            if max_images is not None and len(out) >= max_images:
                break
        return out

    def _check_first_image(self) -> None:
        first = self.images[0].path
        if self._resolve(first) is None:
            tried = [str(f / first) for f in self.folders] or [f"(no image folder exists under {self.root})"]
            raise CocoLayoutError(
                f"image {first} of {self.annotation_file.name} not found; tried {', '.join(tried)}. "
                "Expected images in DIR/<split>/, DIR/images/ or DIR/images/<split>/, or pass --images FOLDER"
            )

    def _resolve(self, file_name: Path) -> Optional[Path]:
        if file_name.is_absolute():
            return file_name if file_name.is_file() else None
        for folder in self.folders:
            candidate = folder / file_name
            if candidate.is_file():
                return candidate
            flat = folder / file_name.name  # file_name with a folder prefix the layout does not have
            if flat.is_file():
                return flat
        return None

    # -- access ------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Background plus one per group."""
        return len(self.spec.names) + 1

    def __len__(self) -> int:
        return len(self.images)

    def labels(self, index: int) -> np.ndarray:
        """uint8 (H, W) semantic label map of image ``index``: smaller instances on top."""
        record = self.images[index]
        return semantic_labels(record.objects, record.height, record.width)

    def __getitem__(self, index: int) -> CocoSample:
        record = self.images[index]
        path = self._resolve(record.path)
        if path is None:
            raise CocoLayoutError(f"image {record.path} not found in {', '.join(map(str, self.folders))}")
        # COCO masks are in the stored pixel order: do not apply EXIF rotation.
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise CocoLayoutError(f"cannot decode image {path}")
        if bgr.shape[:2] != (record.height, record.width):
            raise CocoLayoutError(
                f"{path} is {bgr.shape[0]}x{bgr.shape[1]} but {self.annotation_file.name} says "
                f"{record.height}x{record.width}; the annotations do not belong to this image"
            )
        boxes = np.array([o.box_xyxy() for o in record.objects], np.float32).reshape(-1, 4)
        return CocoSample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.labels(index), boxes)


def semantic_labels(objects: Sequence[CocoObject], height: int, width: int) -> np.ndarray:
    """Merge instance masks into one uint8 label map; overlaps go to the smaller instance.

    Drawn by decreasing mask area (ties: annotation id), so the result does
    not depend on annotation order.
    """
    masks = [(annotation_mask(o.segmentation, height, width), o) for o in objects]
    masks.sort(key=lambda mo: (-int(mo[0].sum()), mo[1].annotation_id))
    out = np.zeros((height, width), np.uint8)
    for mask, obj in masks:
        out[mask] = obj.label
    return out
