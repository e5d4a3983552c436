"""How a refused LabelStream reaches the client through Serve's gRPC proxy with its own status.

A stream ends with the status its method set on Serve's gRPC context only when
a message carries that context; a stream refused before its first answer has
none, and would end OK. Raising is the one way through: Serve turns an exception
into the status set on the context (`StreamEnded`; Serve's proxy, a process
of Ray's, logs each with a traceback), and a BackPressureError into
RESOURCE_EXHAUSTED with its message (no log in the proxy). `StreamRefused` is the latter, with our message: the way
refusals of the call and stream limits travel, so a flood of refused streams
costs no traceback each. Serve's replica logs every exception of a method with
its traceback too; `QuietStreamEnds`, installed in the ingress, drops those
records for these two (the servicer has counted them in its metrics).

Kept tiny: Serve's proxy process unpickles these, so this module imports only Ray.
"""
from __future__ import annotations

import logging

from ray.serve.exceptions import BackPressureError, RayServeException


class StreamRefused(BackPressureError):
    """RESOURCE_EXHAUSTED for a stream, with the servicer's message (its retry hint written into it)."""

    def __init__(self, details: str) -> None:
        RayServeException.__init__(self, details)  # args = (details,): what unpickling passes back
        self._details = details

    @property
    def message(self) -> str:
        return self._details

    def __str__(self) -> str:
        return self._details


class StreamEnded(RuntimeError):
    """Any other status for a stream: Serve sends the code set on the context (a builtin base: the proxy unpickles it)."""


class QuietStreamEnds(logging.Filter):
    """Drops Serve's "Request failed." records (and tracebacks) for streams the servicer ended on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        for _ in range(4):  # Serve wraps what the method raised (gRPCStatusError.original_exception, __cause__)
            if exc is None:
                return True
            if isinstance(exc, (StreamRefused, StreamEnded)):
                return False
            exc = getattr(exc, "original_exception", None) or exc.__cause__
        return True
