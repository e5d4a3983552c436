"""Which student an evaluation starts from, and what it costs in FLOPs.

Every method of one evaluation starts from the same artifact directory: one
given with ``--artifacts``, one exported from a pre-trained checkpoint with
``--init`` (``default`` is the shipped pre-trained student), or random weights
(``--init none``); the export goes through the one artifact cache of
:mod:`sdk.artifact_cache`, so `jitnet run` and the evaluations share it.  The report names the
start so a number is never read without knowing whether the student was
pre-trained.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentStart:
    """The artifact directory every method starts from, and how it was made."""

    artifacts: Path
    init: Optional[Path]
    how: str  # "--artifacts", "--init", "shipped" or "random"

    def to_dict(self) -> dict[str, Any]:
        from core.manifest import MANIFEST_NAME, load_manifest

        manifest = load_manifest(self.artifacts)
        return {
            "artifacts": str(self.artifacts),
            "manifest": str(self.artifacts / MANIFEST_NAME),
            "from_init": self.init is not None,
            "init": None if self.init is None else str(self.init),
            "how": self.how,
            "width": manifest.width,
            "class_names": list(manifest.class_names),
            "parameters": manifest.parameter_count,
        }


def resolve_start(
    classes: Sequence[str], *, artifacts: Optional[Path] = None, init: "str | Path | None" = "default",
    width: float = 0.5, new_head: bool = False,
) -> StudentStart:
    """The student to start from; its classes must be the evaluation's classes, in order.

    ``init``: ``default`` (the shipped pre-trained student), ``none`` (random)
    or a checkpoint.  ``new_head`` gives a checkpoint's student one new head
    for other classes (DAVIS: one "object" class whatever COCO groups it learnt).
    """
    from core.manifest import load_manifest
    from export.pretrained import NONE, resolve_init
    from sdk.artifact_cache import default_artifacts

    if artifacts is not None:
        if init is not None and str(init).lower() != "default":
            raise ValueError("give --artifacts or --init, not both")
        start = StudentStart(Path(artifacts), None, "--artifacts")
    else:
        path = resolve_init(init, width)
        if path is None:
            how = "random"
        else:
            how = "shipped" if init is None or str(init).lower() == "default" else "--init"
        exported = default_artifacts(classes, width, NONE if path is None else path, new_head=new_head)
        start = StudentStart(exported, path, how)
    names = load_manifest(start.artifacts).class_names[1:]
    if list(names) != list(classes):
        raise ValueError(f"{start.artifacts} was exported for classes {names}, this evaluation uses {list(classes)}; "
                         f"export matching artifacts: jitnet export --classes {','.join(classes)} --out DIR")
    return start


def student_gflops(width: float, num_classes: int, padded_hw: tuple[int, int]) -> Optional[dict[str, Any]]:
    """Forward and forward+backward GFLOPs of the student at its padded input size.

    Counted with FlopCounterMode on the PyTorch JITNet (export.flops); None when
    torch is not installed (the time-based speedup still works).
    """
    try:
        from export.jitnet import build_jitnet
    except ImportError as exc:
        log.warning("no FLOPs speedup: %s", exc)
        return None
    from export.flops import count_gflops

    h, w = padded_hw
    infer, train = count_gflops(build_jitnet(width, num_classes, seed=0), h, w)
    return {"infer_gflops": infer, "train_step_gflops": train, "input": f"{h}x{w}",
            "source": "FlopCounterMode on export.jitnet.build_jitnet (train step = forward + backward)"}
