"""The teacher's labels on every frame: the ground truth of the stream evaluation.

``TeacherSource`` turns the CLI's ``--teacher`` value into something that
labels frames: ``embedded`` / ``embedded:NAME`` load a teacher backend in this
process (see sdk.embedded; yolov7-seg when unnamed); a URL (``grpc://host:port``) asks a running
teacher server.  The model is loaded (or the server contacted) only when a
frame actually needs labelling, so a run whose labels are all cached never
touches the teacher.

``label_video`` fills the label cache; ``CachedTeacher`` then plays the
teacher's part for the agent from those labels, so every method of one run
sees exactly the same teacher answers.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from evaluation.label_cache import CacheKey, LabelCache
from sdk.embedded import embedded_teacher

log = logging.getLogger(__name__)

#: Forward GFLOPs of each teacher at a 640x640 input, counted with
#: torch.utils.flop_counter.FlopCounterMode on the bundled checkpoints (yolo-seg)
#: or taken from torchvision's model documentation (Mask R-CNN, at its default
#: 800-pixel short side, not scaled).  YOLO costs scale with the letterboxed area.
TEACHER_GFLOPS_640 = {"yolov5s-seg": 26.36, "yolov7-seg": 143.23}
TEACHER_GFLOPS_FIXED = {"maskrcnn": 134.38, "maskrcnn_v2": 333.58}


def teacher_gflops(model_name: str, frame_hw: tuple[int, int], image_size: int = 640, stride: int = 32) -> Optional[dict[str, Any]]:
    """GFLOPs of one teacher call on a frame of ``frame_hw`` and where the number comes from.

    None for a teacher this table does not know (e.g. a custom server model):
    the FLOPs speedup is then left out rather than guessed.
    """
    base = model_name.split("@")[0]
    if base in TEACHER_GFLOPS_640:
        h, w = frame_hw
        gain = image_size / max(h, w)
        lh = math.ceil(round(h * gain) / stride) * stride
        lw = math.ceil(round(w * gain) / stride) * stride
        value = TEACHER_GFLOPS_640[base] * (lh * lw) / (640 * 640)
        return {"gflops": value, "input": f"{lh}x{lw}",
                "source": f"FlopCounterMode count of {base} at 640x640 ({TEACHER_GFLOPS_640[base]} GFLOPs), "
                          f"scaled to the letterboxed {lh}x{lw} input"}
    if base in TEACHER_GFLOPS_FIXED:
        return {"gflops": TEACHER_GFLOPS_FIXED[base], "input": "800 short side",
                "source": "torchvision model documentation (not scaled to the frame size)"}
    return None


class TeacherSource:
    """A teacher named on the command line, loaded on first use."""

    def __init__(self, spec: str, *, score_threshold: Optional[float] = None, timeout_s: float = 120.0):
        self.spec = spec.strip()
        if not self.spec:
            raise ValueError("--teacher needs 'embedded', 'embedded:yolov5s-seg' or a URL like grpc://host:50051")
        self.score_threshold = score_threshold
        self.timeout_s = timeout_s
        self.calls = 0
        self._labeler = None
        self._client = None
        self._info: Optional[tuple[str, str]] = None
        self._server_threshold: Optional[float] = None

    @property
    def embedded(self) -> bool:
        return self.backend_name is not None

    @property
    def backend_name(self) -> Optional[str]:
        """The in-process backend's registry name (None for a URL)."""
        return embedded_teacher(self.spec)

    def identity(self) -> tuple[str, str]:
        """(model name, model version) for the cache key.

        For an embedded backend the version needs the checkpoint digest, so the
        backend is loaded; for a server one Info call is made.  A cache hit
        still never labels a frame.
        """
        if self._info is None:
            if self.embedded:
                labeler = self._load()
                self._info = (labeler.model_name, labeler.model_version)
            else:
                info = self._connect().info(deadline_s=self.timeout_s)
                self._info = (info.model_name, info.model_version)
                self._server_threshold = round(float(info.default_score_threshold), 6)  # float32 on the wire
        return self._info

    def _load(self):
        if self._labeler is None:
            from teacher_server.labeler import Labeler

            name = self.backend_name
            log.info("loading teacher %s in process", name)
            self._labeler = Labeler.from_name(name)
            if self.score_threshold is not None:
                self._labeler.score_threshold = float(self.score_threshold)
        return self._labeler

    def _connect(self):
        if self._client is None:
            from edge_agent.teacher_client import TeacherClient

            self._client = TeacherClient(self.spec, timeout_s=self.timeout_s)
        return self._client

    @property
    def effective_score_threshold(self) -> float:
        if self.score_threshold is not None:
            return float(self.score_threshold)
        if self._server_threshold is not None:  # a server labels with its own default
            return self._server_threshold
        from teacher_server.semantic import DEFAULT_SCORE_THRESHOLD

        return DEFAULT_SCORE_THRESHOLD

    def label_batch(self, frames: Sequence[np.ndarray], groups: Sequence[str], indices: Sequence[int]) -> list[np.ndarray]:
        """Teacher label maps (uint8, H x W) of frames, in order."""
        self.calls += len(frames)
        if self.embedded:
            labeler = self._load()
            return [r.label_map for r in labeler.label_batch(list(frames), [list(groups)] * len(frames))]
        client = self._connect()
        return [
            client.label(f, list(groups), frame_index=int(i), score_threshold=self.score_threshold,
                         deadline_s=self.timeout_s).label_map
            for f, i in zip(frames, indices)
        ]

    def warmup(self, frame_hw: tuple[int, int]) -> None:
        """One untimed call at this size, so the first cached frame is not charged the warm-up."""
        if self.embedded:
            self._load().backend.warmup(*frame_hw)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class VideoLabels:
    """Teacher labels of every frame of one clip, and what producing them cost."""

    labels: list[np.ndarray] = field(repr=False)
    key: CacheKey
    cache_dir: Path
    hits: int
    misses: int
    #: Teacher seconds per frame as measured when each label map was computed
    #: (this run for misses, an earlier run on this machine for hits).
    recorded_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def teacher_ms(self) -> float:
        return float(np.median(self.recorded_ms)) if self.recorded_ms else float("nan")


def label_video(
    video: Union[str, Path],
    frames: Sequence[np.ndarray],
    source: TeacherSource,
    groups: Sequence[str],
    cache: LabelCache,
    *,
    extra: str = "",
    batch_size: int = 1,
) -> VideoLabels:
    """Labels of ``frames`` (decoded from ``video``) from the cache, computing only missing ones.

    ``extra`` must name everything else that changes the labels (the frame
    scale, for instance).  ``batch_size`` 1 keeps the recorded per-frame cost
    the cost of one call, which is what online distillation pays.
    """
    name, version = source.identity()
    key = CacheKey.for_video(video, name, version, [[g] for g in groups], source.effective_score_threshold, extra)
    hits0, misses0 = cache.hits, cache.misses
    warmed = False

    def compute(batch: list[int]) -> list[np.ndarray]:
        nonlocal warmed
        if not warmed:
            source.warmup(frames[batch[0]].shape[:2])
            warmed = True
        return source.label_batch([frames[i] for i in batch], groups, batch)

    found = cache.get_or_compute_many(key, range(len(frames)), compute, batch_size=batch_size)
    labels = [found[i] for i in range(len(frames))]
    for i, lab in enumerate(labels):
        if lab.shape != frames[i].shape[:2]:
            raise ValueError(f"cached labels of frame {i} are {lab.shape}, the frame is {frames[i].shape[:2]}; "
                             f"delete {cache.entry_dir(key)} and run again")
    seconds = cache.recorded_seconds(key)
    recorded = [1e3 * seconds[i] for i in range(len(frames)) if i in seconds]
    return VideoLabels(labels, key, cache.entry_dir(key), cache.hits - hits0, cache.misses - misses0, recorded)


def boxes_from_labels(label_map: np.ndarray, min_area: int = 4) -> list[tuple[tuple[float, float, float, float], int]]:
    """(box, group index) of each connected region of each class.

    The cache keeps label maps only; the regions' boxes stand in for the
    teacher's instance boxes when weighting the loss (touching instances of one
    class share one box, which covers the same pixels).
    """
    out = []
    for k in np.unique(label_map):
        if k == 0:
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats((label_map == k).astype(np.uint8), connectivity=8)
        for x, y, w, h, area in stats[1:n]:
            if area >= min_area:
                out.append(((float(x), float(y), float(x + w), float(y + h)), int(k)))
    return out


class CachedTeacher:
    """The agent's Teacher (edge_agent.teacher) over precomputed answers; counts the calls it answers.

    ``labels`` holds, per frame, either a label map (boxes are then derived from its
    connected regions) or a full teacher answer with ``label_map`` and ``instances``
    (a :class:`core.labels.TeacherLabels`), whose boxes are used as given.  It is the one
    teacher over precomputed answers: the evaluations, `jitnet bench agent --student-only`
    and, behind its live-mode queue, `jitnet bench fleet` (bench.fleet.SimulatedClient) use it.
    ``score_threshold`` is the one the answers were computed at: a request for another
    is refused instead of silently answered with the wrong detections.
    """

    def __init__(self, labels: Sequence[Any], groups: Sequence[str], model_name: str = "cached",
                 model_version: str = "", score_threshold: Optional[float] = None):
        self.labels, self.groups = labels, tuple(groups)
        self.model_name, self.model_version = model_name, model_version
        self.score_threshold = score_threshold
        self.calls = 0
        self.asked: list[int] = []

    def label(self, frame_rgb: np.ndarray, groups: Sequence[str], *, frame_index: int,
              score_threshold: Optional[float] = None, need: Any = None):
        """The cached answer for ``frame_index`` (``need`` is accepted and ignored: one camera, no queue)."""
        from core.labels import Instance, TeacherLabels

        if tuple(groups) != self.groups:
            raise ValueError(f"the labels were computed for groups {self.groups}, not {tuple(groups)}")
        if (score_threshold is not None and self.score_threshold is not None
                and abs(score_threshold - self.score_threshold) > 1e-9):
            raise ValueError(f"the labels were computed at score threshold {self.score_threshold}, not "
                             f"{score_threshold}: re-label with --score-threshold {score_threshold}")
        self.calls += 1
        self.asked.append(frame_index)
        answer = self.labels[frame_index]
        if hasattr(answer, "label_map"):
            label_map = answer.label_map
            instances = [Instance(tuple(i.box), i.group, i.group_index, i.score, getattr(i, "class_name", ""))
                         for i in answer.instances]
        else:
            label_map = answer
            instances = [Instance(box, self.groups[k - 1], k, 1.0) for box, k in boxes_from_labels(label_map)]
        return TeacherLabels(frame_index=frame_index, label_map=label_map, instances=instances,
                             groups=self.groups, model_name=self.model_name, model_version=self.model_version)

    def submit(self, *args: Any, **kwargs: Any):
        raise NotImplementedError("evaluations run the agent in replay mode")


def timed_teacher_ms(source: TeacherSource, frames: Sequence[np.ndarray], groups: Sequence[str], n: int) -> float:
    """Median ms of ``n`` fresh teacher calls in this run (for when every label came from the cache)."""
    if n <= 0:
        return float("nan")
    source.warmup(frames[0].shape[:2])
    picks = np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(int)
    ms = []
    for i in picks:
        t0 = time.perf_counter()
        source.label_batch([frames[i]], groups, [int(i)])
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ms))
