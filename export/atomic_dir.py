"""Put a freshly written directory in place of an old one so that readers always see a whole directory.

An artifact directory is several files that must match; copying over the old
ones would leave a mix after a crash.  The new directory is written beside the
target and swapped in with one atomic rename.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the OS cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target`` so that ``target`` is always a whole directory, old or new.

    The old directory is swapped out in one atomic step and deleted only after;
    a crash at any point leaves ``target`` complete (plus, at worst, a hidden
    leftover beside it).  Without RENAME_EXCHANGE the old one is renamed aside
    first, which leaves a window without ``target``, but never a mix of the two.
    """
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old directory
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, aside)
    os.replace(new, target)
    shutil.rmtree(aside, ignore_errors=True)
