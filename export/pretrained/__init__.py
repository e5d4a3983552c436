"""The shipped pre-trained student and what ``--init`` means everywhere.

The paper never starts a camera from random weights; neither do we.  The
package ships one width-0.5 JITNet pre-trained on real data (its card,
``jitnet-w0.5.json``, says on what, how, and with which result), and every
command that builds a student (``sdk.connect``, ``jitnet run``, ``demo``,
``eval``, ``export``) resolves ``--init`` through :func:`resolve_init`:

- ``default``: the shipped student (when one exists for the asked width),
- ``none``: random weights,
- a path: that checkpoint.

This module needs no torch: resolving a start is cheap, loading it is
``export.jitnet.load_student``'s job.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Optional, Union

from core.digest import sha256_file
from export.pretrain.card import card_of


def sha256_of(path: Path) -> str:
    """sha256 of a checkpoint, computed once per file version (a session start asks up to three times)."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SHIPPED = {0.5: HERE / "jitnet-w0.5.pt"}
DEFAULT, NONE = "default", "none"
REBUILD = "make pretrained"


class InitError(ValueError):
    """``--init`` names something unusable; the message is one line that says what to do."""


def shipped_checkpoint(width: float = 0.5) -> Optional[Path]:
    """The shipped student for this width, checked against its card; None if none is shipped for it."""
    path = SHIPPED.get(round(float(width), 6))
    if path is None:
        return None
    card = card_of(path)
    if not path.is_file() or not card.is_file():
        raise InitError(f"the shipped student {path} (or its card) is missing from this install; rebuild it with "
                        f"`{REBUILD}`, reinstall jitnet-edge, or pass --init none for a random start")
    want = json.loads(card.read_text()).get("sha256")
    got = sha256_of(path)
    if want != got:
        raise InitError(f"the shipped student {path} has sha256 {got[:12]}..., its card says {str(want)[:12]}...; "
                        f"reinstall jitnet-edge or rebuild it with `{REBUILD}`, or pass --init none")
    return path


def resolve_init(init: Union[str, Path, None], width: float = 0.5) -> Optional[Path]:
    """The checkpoint a student starts from: None for random weights.

    ``None`` and ``"default"`` mean the shipped student; widths without one
    start random and say so in the log.
    """
    text = DEFAULT if init is None else str(init).strip()
    if text.lower() == NONE:
        return None
    if text.lower() == DEFAULT:
        path = shipped_checkpoint(width)
        if path is None:
            log.warning("no pre-trained student is shipped for width %g (only %s): random start", width,
                        ", ".join(f"{w:g}" for w in SHIPPED))
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise InitError(f"--init {path} does not exist; pass a checkpoint written by `jitnet pretrain`, "
                        "--init default for the shipped student or --init none for random weights")
    return path


def describe_start(path: Optional[Path]) -> str:
    """One phrase for the commands' output: where the student's weights come from."""
    if path is None:
        return "random weights"
    if path in SHIPPED.values():
        return f"the shipped pre-trained student ({path.name}, --init default)"
    return f"the pre-trained student {path}"
