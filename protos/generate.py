"""Regenerate the Python gRPC modules from protos/*.proto.

The one documented command (run from anywhere; it works from the repo root):

    python -m protos.generate

It runs ``python -m grpc_tools.protoc -I. --python_out=. --pyi_out=.
--grpc_python_out=. protos/teacher.proto`` in the repository root, so the
generated modules import each other as ``protos.teacher_pb2``. Generated files
are committed and never edited by hand; a test fails when they are stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_FILES = ("protos/teacher.proto",)


def generate(out_dir: Optional[Path] = None) -> list[Path]:
    """Run protoc for every proto file; returns the files written."""
    try:
        from grpc_tools import protoc  # dev-only dependency
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("grpcio-tools is missing: pip install 'jitnet-edge[dev]'") from exc
    import importlib.resources

    out = Path(out_dir) if out_dir is not None else REPO_ROOT
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    written: list[Path] = []
    for proto in PROTO_FILES:
        args = [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(REPO_ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
        stem = Path(proto).with_suffix("")
        written += [out / f"{stem}_pb2.py", out / f"{stem}_pb2.pyi", out / f"{stem}_pb2_grpc.py"]
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output root (default: the repo root)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
