"""jitnet-edge: keep a small video segmentation student accurate with a remote teacher.

    import sdk
    with sdk.connect("grpc://teacher:50051", classes=["person"]) as session:
        for result in session.segment("rtsp://camera/stream"):
            ...
"""
from __future__ import annotations

from typing import Any

__all__ = ["connect"]


def connect(*args: Any, **kwargs: Any):
    """See :func:`sdk.session.connect` (imported lazily: `import sdk` stays cheap)."""
    from sdk.session import connect as _connect

    return _connect(*args, **kwargs)
