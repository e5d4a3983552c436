"""The student's artifacts for a set of classes, exported once per start into the cache.

`jitnet run`, the SDK, the evaluations and the benchmarks all start a student
the same way: a start (the shipped checkpoint, another `jitnet pretrain`
checkpoint, or random weights) cut to the run's classes and exported to an
artifact directory.  Exporting needs PyTorch and takes seconds, so it happens
once per (classes, width, start, head) and lands in ``cache_root()/artifacts``
under one key; every caller goes through :func:`default_artifacts`, so one
checkpoint is never exported twice under two names.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from core.cache import cache_root

log = logging.getLogger(__name__)


def artifacts_dir() -> Path:
    """Where exported artifacts are cached (``$JITNET_CACHE/artifacts``)."""
    return cache_root() / "artifacts"


def default_artifacts(classes: Sequence[str], width: float = 0.5, init: "str | Path | None" = "default", *,
                      new_head: bool = False) -> Path:
    """Artifacts for ``classes`` (in order), exported once into the cache (the export needs torch).

    ``init`` is where the weights start: ``default`` (the shipped pre-trained
    student), ``none`` (random) or a checkpoint path.  The checkpoint's head is
    cut to ``classes``: groups it knows keep their trained channel, others get
    a fresh one.  ``new_head`` instead gives every class the mean of the
    checkpoint's foreground rows ("anything the student knew as an object"), so
    a COCO-trained student starts DAVIS's one "object" class as a generic
    foreground detector.  A checkpoint of another ``width`` is refused.
    """
    from core.manifest import load_manifest
    from export.pretrained import describe_start, resolve_init, sha256_of

    classes = list(classes)
    start = resolve_init(init, width)
    new_head = new_head and start is not None
    tag = "random" if start is None else f"init-{sha256_of(start)[:12]}"
    target = artifacts_dir() / f"{'-'.join(classes)}-w{width:g}-{tag}{'-newhead' if new_head else ''}"
    log.info("student starts from %s", describe_start(start))
    try:
        manifest = load_manifest(target)
        if manifest.class_names[1:] == classes and abs(float(manifest.width) - width) < 1e-9:
            return target
    except Exception:  # absent, or left half-written by a killed export: export again
        pass
    try:
        from export.artifacts import generate
    except ImportError as exc:
        init_flag = "" if start is None else f" --init {start}"
        raise RuntimeError(
            f"no artifacts given and PyTorch is not installed to export them ({exc}); run `jitnet export --classes "
            f"{','.join(classes)} --width {width:g}{init_flag} --out DIR` on a machine with jitnet-edge[export] and "
            "pass --artifacts DIR (artifacts=DIR in the SDK)"
        ) from exc
    model, note = (None, None) if start is None else _student_for(start, classes, width, new_head)
    log.info("exporting JITNet artifacts for %s (width %g%s) to %s", classes, width, f", {note}" if note else "", target)
    generate(target, class_names=classes, width=width, model=model)
    return target


def _student_for(init: Path, classes: list[str], width: float, new_head: bool):
    """The checkpoint's student for ``classes``, and a note when its head was rebuilt."""
    import torch

    from export.jitnet import JITNetSpec, load_student

    model = load_student(init, width=width, classes=None if new_head else classes)
    if not new_head:
        return model, None
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
    return model, f"new head for {classes} from the checkpoint's {known} classes"

