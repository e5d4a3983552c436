"""Loading onnxruntime-training safely, and choosing where it runs.

`onnxruntime`, `onnxruntime-gpu` and `onnxruntime-training*` all install the
same `onnxruntime/` package; one installed over another silently breaks
training.  Everything that needs the training API goes through
:func:`training_api` so that failure is said once, clearly, with the fix.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import logging
import sys
import types
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-training", "onnxruntime-training-cpu")
TRAINING_DISTRIBUTIONS = ("onnxruntime-training", "onnxruntime-training-cpu")
FIX = (
    "fix it with: pip uninstall -y onnxruntime onnxruntime-gpu onnxruntime-training onnxruntime-training-cpu "
    "&& pip install 'jitnet-edge[edge]' (or '[edge-cuda]' on an x86_64 CUDA 11.8 box); "
    "or use the PyTorch backend with --backend torch"
)


class RuntimeEnvironmentError(RuntimeError):
    """onnxruntime-training is missing, clobbered, or shares the environment with another onnxruntime."""


def installed_ort_distributions() -> dict[str, str]:
    found = {}
    for dist in ORT_DISTRIBUTIONS:
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return found


def check_environment() -> dict[str, str]:
    """Raise :class:`RuntimeEnvironmentError` unless exactly one onnxruntime-training is installed."""
    found = installed_ort_distributions()
    listing = ", ".join(f"{k}=={v}" for k, v in found.items()) or "none"
    if not any(d in found for d in TRAINING_DISTRIBUTIONS):
        raise RuntimeEnvironmentError(f"onnxruntime-training is not installed (found: {listing}); {FIX}")
    if len(found) > 1:
        raise RuntimeEnvironmentError(
            f"several onnxruntime packages are installed ({listing}); they overwrite each other's "
            f"'onnxruntime' folder, so on-device training is broken; {FIX}"
        )
    return found


@functools.lru_cache(maxsize=None)
def training_api() -> Any:
    """Import ``onnxruntime.training.api`` without importing torch.

    ``onnxruntime/training/__init__.py`` imports torch (~225 MB RSS on a
    device).  The API itself does not need it, so a bare package object with
    the real ``__path__`` is registered first when the package is not loaded.
    """
    check_environment()
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeEnvironmentError(f"onnxruntime is not importable; {FIX}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "training"
    if not (folder / "api").is_dir():
        raise RuntimeEnvironmentError(
            f"{folder} has no training API: the onnxruntime package was overwritten by a non-training build; {FIX}"
        )
    if "onnxruntime.training" not in sys.modules and "torch" not in sys.modules:
        # `import onnxruntime` probes ORTModule (torch) in training builds;
        # a bare training package and a blocked ortmodule keep torch out.
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(folder)]  # type: ignore[attr-defined]
        package.__package__ = "onnxruntime.training"
        sys.modules["onnxruntime.training"] = package
        sys.modules.setdefault("onnxruntime.training.ortmodule", None)  # type: ignore[arg-type]
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeEnvironmentError(f"onnxruntime does not import ({exc}); {FIX}") from exc
    try:
        from onnxruntime.training import api
    except ImportError as exc:
        raise RuntimeEnvironmentError(
            f"onnxruntime.training.api does not import ({exc}); the onnxruntime folder is probably clobbered; {FIX}"
        ) from exc
    return api


@functools.lru_cache(maxsize=None)
def select_device(requested: str = "auto") -> str:
    """``"cuda"`` when onnxruntime-training's CUDA provider really loads, else ``"cpu"``.

    A provider can be listed as available yet fail to load (no libcudart.so.11,
    wrong cuDNN), so the check creates a tiny session.  The reason is logged once.
    """
    import onnxruntime as ort

    if requested == "cpu":
        log.info("ONNX Runtime device: cpu (requested)")
        return "cpu"
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        reason = f"this onnxruntime build has no CUDA provider (available: {available})"
    else:
        try:
            from onnx import TensorProto, helper

            graph = helper.make_graph(
                [helper.make_node("Identity", ["x"], ["y"])],
                "probe",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            )
            probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            probe.ir_version = 8
            session = ort.InferenceSession(probe.SerializeToString(), providers=["CUDAExecutionProvider"])
            if "CUDAExecutionProvider" in session.get_providers():
                log.info("ONNX Runtime device: cuda (CUDA provider loaded)")
                return "cuda"
            reason = "the CUDA provider is built in but did not load (missing CUDA 11.8 / cuDNN 8 libraries?)"
        except Exception as exc:  # any failure to load means: use the CPU
            reason = f"the CUDA provider failed to load ({exc})"
    if requested == "cuda":
        raise RuntimeEnvironmentError(f"device cuda was requested but {reason}")
    log.info("ONNX Runtime device: cpu, because %s", reason)
    return "cpu"
