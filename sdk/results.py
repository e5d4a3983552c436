"""Per-frame results as JSON Lines: one object per line, readable while written.

One line per frame keeps a crashed or killed run's log usable up to its last
frame, and ``tail -f`` / pandas.read_json(lines=True) read it directly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Optional, Union

import numpy as np

log = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for numpy scalars/arrays, paths, dataclasses, tuples and sets.

    NaN and infinities become null: strict JSON has no such numbers, and a
    mean IoU over no classes is "no value", not a number.
    """
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    raise TypeError(f"cannot log a {type(value).__name__} as JSON; convert it to numbers/strings first")


class JsonlLog:
    """Append-only writer of one JSON object per line, flushed after each line."""

    def __init__(self, path: Union[str, Path], *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: Optional[IO[str]] = open(self.path, "a" if append else "w", encoding="utf-8")
        self.lines_written = 0

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError(f"{self.path}: log is closed")
        if not isinstance(record, Mapping):
            raise TypeError(f"a log record must be a mapping, got {type(record).__name__}")
        line = json.dumps(to_jsonable(record), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self._file.write(line + "\n")
        self._file.flush()
        self.lines_written += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_jsonl(path: Union[str, Path]) -> Iterator[dict[str, Any]]:
    """Records of a JSON Lines file, in order.

    A cut-off last line (the writer was killed mid-line) is skipped with a
    warning; a bad line anywhere else is an error naming the line.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: incomplete last line skipped (writer interrupted?)", path, number)
                return
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield record


def read_jsonl(path: Union[str, Path]) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))
