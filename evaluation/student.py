"""Which student an evaluation starts from, and what it costs in FLOPs.

Every method of one evaluation starts from the same artifact directory: one
given with ``--artifacts``, one exported from a pre-trained checkpoint with
``--init`` (cached, so the export happens once per checkpoint; ``default``
is the shipped pre-trained student), or random weights (``--init none``).  The report names the
start so a number is never read without knowing whether the student was
pre-trained.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from core.digest import sha256_file

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


def _cache_root() -> Path:
    return Path(os.environ.get("JITNET_CACHE", Path.home() / ".cache" / "jitnet-edge")) / "artifacts"


def _student_for(init: Path, classes: Sequence[str], new_head: bool):
    """The checkpoint's student for ``classes``; a note when its head was rebuilt.

    Without ``new_head`` the head is cut to ``classes`` by group name (groups
    the checkpoint never learnt get a fresh channel, logged).  With it, every
    class gets the mean of the checkpoint's foreground rows ("anything the
    student knew as an object"), so a COCO-pretrained student starts DAVIS as
    a generic foreground detector instead of from a random head.
    """
    import torch

    from export.jitnet import JITNetSpec, load_student, load_student_start

    if not new_head:
        model, start = load_student_start(init, classes=list(classes))
        return model, (f"fresh head channel(s) for {list(start.fresh)}" if start.fresh else None)
    model = load_student(init)
    want = len(classes) + 1
    old = model.logits
    head = torch.nn.Conv2d(old.in_channels, want, 1)
    with torch.no_grad():
        head.weight[0] = old.weight[0]
        head.bias[0] = old.bias[0]
        head.weight[1:] = old.weight[1:].mean(0, keepdim=True)
        head.bias[1:] = old.bias[1:].mean()
    known = model.spec.num_classes - 1
    model.logits = head
    model.spec = JITNetSpec(model.spec.width, want)
    return model, f"new head for {list(classes)} from the checkpoint's {known} classes"


def artifacts_from_init(init: Path, classes: Sequence[str], *, cache_root: Optional[Path] = None,
                        new_head: bool = False) -> Path:
    """Artifacts exported from a pre-trained student checkpoint, once per (checkpoint, classes)."""
    from core.manifest import load_manifest

    init = Path(init)
    if not init.is_file():
        raise FileNotFoundError(f"--init {init} does not exist; pass a checkpoint written by `jitnet pretrain`")
    target = (cache_root or _cache_root()) / f"init-{sha256_file(init)[:16]}-{'-'.join(classes)}{'-newhead' if new_head else ''}"
    try:
        if load_manifest(target).class_names[1:] == list(classes):
            return target
    except Exception:
        pass
    try:
        from export.artifacts import generate
    except ImportError as exc:
        raise RuntimeError(f"--init needs PyTorch to export artifacts ({exc}); install jitnet-edge[export] "
                           "or export once with `jitnet export --init CKPT --out DIR` and pass --artifacts DIR") from exc
    model, note = _student_for(init, classes, new_head)
    log.info("exporting artifacts from %s (width %g%s) to %s", init, model.spec.width,
             f", {note}" if note else "", target)
    generate(target, class_names=list(classes), width=model.spec.width, model=model)
    return target


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
    from export.pretrained import describe_start, resolve_init

    if artifacts is not None:
        if init is not None and str(init).lower() != "default":
            raise ValueError("give --artifacts or --init, not both")
        start = StudentStart(Path(artifacts), None, "--artifacts")
    else:
        path = resolve_init(init, width)
        if path is None:
            from sdk.session import default_artifacts

            start = StudentStart(default_artifacts(list(classes), width, "none"), None, "random")
        else:
            how = "shipped" if init is None or str(init).lower() == "default" else "--init"
            start = StudentStart(artifacts_from_init(path, classes, new_head=new_head), path, how)
        log.info("the student starts from %s", describe_start(path))
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
