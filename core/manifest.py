"""The artifact directory's contract: what `export` writes and the agent reads.

Kept free of torch and onnxruntime so the device side can validate an
artifact directory before it loads any runtime.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Bump when the meaning of an artifact directory changes; readers refuse others.
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact directory is missing, incomplete, corrupt or from another version."""


@dataclass(frozen=True)
class Manifest:
    class_names: list[str]  # index 0 is "background"
    width: float
    input_height: int  # the size the graphs were exported at (any multiple of 32 runs)
    input_width: int
    files: dict[str, str]  # role -> file name: training, eval, optimizer, checkpoint, inference
    learning_rate: float  # the SGD learning rate the user asked for
    momentum: float
    optimizer_learning_rate: float  # what ORT's optimizer is set to (see export/artifacts.py)
    input_normalization: dict[str, Any]
    stride: int = 32
    parameter_count: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def path(self, directory: Path, role: str) -> Path:
        return Path(directory) / self.files[role]

    def save(self, directory: Path) -> Path:
        target = Path(directory) / MANIFEST_NAME
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        tmp.replace(target)
        return target


REQUIRED_ROLES = ("training", "eval", "optimizer", "checkpoint", "inference", "weights")


def load_manifest(directory: Path | str) -> Manifest:
    """Read and validate ``manifest.json``; every failure says what to do next."""
    directory = Path(directory)
    hint = f"re-create it with: jitnet export --out {directory}"
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory {directory} does not exist; {hint}")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {directory} is not a complete artifact directory; {hint}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt ({exc}); {hint}") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} is corrupt (not a JSON object); {hint}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {version!r} but this jitnet-edge reads version {FORMAT_VERSION}; {hint}"
        )
    try:
        manifest = Manifest(**raw)
    except TypeError as exc:
        raise ArtifactError(f"{path} does not match format version {FORMAT_VERSION} ({exc}); {hint}") from exc
    missing = [r for r in REQUIRED_ROLES if r not in manifest.files]
    if missing:
        raise ArtifactError(f"{path} names no file for {missing}; {hint}")
    absent = [manifest.files[r] for r in REQUIRED_ROLES if not manifest.path(directory, r).exists()]
    if absent:
        raise ArtifactError(f"{directory} lacks {absent}; {hint}")
    if manifest.num_classes < 2 or manifest.class_names[0] != "background":
        raise ArtifactError(f"{path}: class_names must start with 'background' and name at least one class; {hint}")
    return manifest
