"""Backends by name, imported only when asked for (torch and the GPL wheel are heavy)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional, Union

from teacher_server.backends.base import TeacherBackend

# name -> (module, builder function, fixed keyword arguments)
_BACKENDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "yolov5s-seg": ("teacher_server.backends.yolo", "YoloSegBackend", {"variant": "yolov5s-seg"}),
    "yolov7-seg": ("teacher_server.backends.yolo", "YoloSegBackend", {"variant": "yolov7-seg"}),
    "maskrcnn": ("teacher_server.backends.maskrcnn", "MaskRCNNBackend", {"variant": "maskrcnn"}),
    "maskrcnn_v2": ("teacher_server.backends.maskrcnn", "MaskRCNNBackend", {"variant": "maskrcnn_v2"}),
}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def load_backend(
    name: str,
    *,
    weights: Optional[Union[str, Path]] = None,
    device: str = "cpu",
    **options: Any,
) -> TeacherBackend:
    """Build a backend by registry name; raises BackendUnavailable when it cannot run here."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown teacher backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    module_name, cls_name, fixed = _BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(weights=weights, device=device, **fixed, **options)
