"""Mask R-CNN from torchvision, the paper's teacher.

No package reachable offline carries its COCO weights, so this backend loads
them from a file the operator gives, or from torch's own download cache. With
neither it refuses to start and says where to put the file: it never serves
random weights.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torchvision
from torchvision.models import detection

from teacher_server.backends.base import BackendOutput, BackendUnavailable, TeacherBackend, file_digest
from teacher_server.semantic import MASK_THRESHOLD, Detections

log = logging.getLogger(__name__)

# variant -> (builder, weights enum)
VARIANTS = {
    "maskrcnn": (detection.maskrcnn_resnet50_fpn, detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1),
    "maskrcnn_v2": (detection.maskrcnn_resnet50_fpn_v2, detection.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1),
}


def cached_weights_path(variant: str) -> Path:
    """Where torchvision would have stored the COCO weights after a download."""
    url = VARIANTS[variant][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def resolve_weights(variant: str, weights: Optional[Union[str, Path]]) -> Path:
    """The weights file to load, or BackendUnavailable explaining how to provide one."""
    url = VARIANTS[variant][1].url
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackendUnavailable(f"{variant}: weights file {path} does not exist")
        return path
    cached = cached_weights_path(variant)
    if cached.is_file():
        return cached
    raise BackendUnavailable(
        f"{variant}: no COCO weights here, and this server never serves random weights. "
        f"Download {url} on a machine with internet and either put it at {cached} "
        f"(torch's cache) or pass its path with --weights. "
        "For a teacher that needs no download use --backend yolov5s-seg or yolov7-seg."
    )


class MaskRCNNBackend(TeacherBackend):
    """torchvision Mask R-CNN (ResNet-50 FPN, v1 or v2) with COCO category names."""

    def __init__(
        self,
        variant: str = "maskrcnn",
        *,
        weights: Optional[Union[str, Path]] = None,
        device: str = "cpu",
        min_size: int = 800,
        max_size: int = 1333,
        max_detections: int = 100,
        **builder_options: Any,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Mask R-CNN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        path = resolve_weights(variant, weights)
        builder, weights_enum = VARIANTS[variant]
        self.class_names: tuple[str, ...] = tuple(weights_enum.meta["categories"])
        model = builder(
            weights=None,
            weights_backbone=None,
            num_classes=len(self.class_names),
            min_size=min_size,
            max_size=max_size,
            box_detections_per_img=max_detections,
            **builder_options,  # e.g. rpn_post_nms_top_n_test, passed to torchvision's builder
        )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise BackendUnavailable(
                f"{variant}: {path} is not a {builder.__name__} COCO state dict ({str(exc).splitlines()[0]}); "
                f"expected the file from {weights_enum.url}"
            ) from exc
        self.name = variant
        self.device = str(torch.device(device))
        self.model = model.eval().to(self.device)
        self.version = f"torchvision=={torchvision.__version__} {builder.__name__} {path.name} sha256:{file_digest(path)}"
        log.info("loaded %s from %s on %s", variant, path, self.device)

    def _predict(self, frames: list[np.ndarray], score_threshold: float) -> BackendOutput:
        start = time.perf_counter()
        self.model.roi_heads.score_thresh = score_threshold
        images = [torch.from_numpy(f).to(self.device).permute(2, 0, 1).float().div_(255.0) for f in frames]
        with torch.inference_mode():
            outputs = self.model(images)
        inference_done = time.perf_counter()
        detections = []
        for frame, out in zip(frames, outputs):
            height, width = frame.shape[:2]
            labels = out["labels"].cpu().numpy()
            named = np.array([0 < int(c) < len(self.class_names) and self.class_names[int(c)] != "N/A" for c in labels], bool)
            if not named.any():
                detections.append(Detections.empty(height, width))
                continue
            masks = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()
            detections.append(
                Detections(
                    boxes=out["boxes"].cpu().numpy().astype(np.float32)[named],
                    scores=out["scores"].cpu().numpy().astype(np.float32)[named],
                    class_names=[self.class_names[int(c)] for c in labels[named]],
                    masks=masks[named].reshape(-1, height, width),
                )
            )
        return BackendOutput(detections, inference_s=inference_done - start, postprocess_s=time.perf_counter() - inference_done)
