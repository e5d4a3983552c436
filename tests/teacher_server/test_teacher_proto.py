"""The committed gRPC modules are exactly what `python -m protos.generate` makes from the .proto."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from protos import generate

PROTOS = generate.REPO_ROOT / "protos"
GENERATED = ("teacher_pb2.py", "teacher_pb2.pyi", "teacher_pb2_grpc.py")


def _serialized_descriptor(source: str) -> bytes:
    """The FileDescriptorProto bytes passed to AddSerializedFile in a *_pb2.py."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError("no AddSerializedFile call in generated module")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("protos_out")
    generate.generate(out)
    return out / "protos"


def test_generated_modules_describe_the_current_proto(regenerated: Path) -> None:
    fresh = _serialized_descriptor((regenerated / "teacher_pb2.py").read_text())
    committed = _serialized_descriptor((PROTOS / "teacher_pb2.py").read_text())
    assert fresh == committed, "protos/teacher_pb2.py is stale: run `python -m protos.generate` and commit"


def test_generated_files_match_byte_for_byte_with_the_pinned_generator(regenerated: Path) -> None:
    from importlib.metadata import version

    committed_grpc = (PROTOS / "teacher_pb2_grpc.py").read_text()
    pinned = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", committed_grpc).group(1)
    if version("grpcio-tools") != pinned:
        pytest.skip(f"grpcio-tools {version('grpcio-tools')} is not the pinned {pinned}; descriptor check still ran")
    for name in GENERATED:
        assert (regenerated / name).read_text() == (PROTOS / name).read_text(), (
            f"protos/{name} is stale: run `python -m protos.generate` and commit"
        )


def test_package_is_versioned_and_has_unary_and_streaming_calls() -> None:
    from protos import teacher_pb2

    service = teacher_pb2.DESCRIPTOR.services_by_name["Teacher"]
    assert service.full_name == "jitnet.teacher.v1.Teacher"
    methods = {m.name: m for m in service.methods}
    assert not methods["Label"].client_streaming and not methods["Label"].server_streaming
    assert methods["LabelStream"].client_streaming and methods["LabelStream"].server_streaming


def test_protobuf_floor_in_pyproject_covers_the_generated_code() -> None:
    source = (PROTOS / "teacher_pb2.py").read_text()
    gencode = tuple(int(x) for x in re.search(r"Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", source).groups())
    # A regex, not tomllib: the project supports Python 3.9 and 3.10 too.
    floor = re.search(r'"(protobuf[<>=!~][^"]*)"', (generate.REPO_ROOT / "pyproject.toml").read_text()).group(1)
    found = tuple(int(x) for x in re.search(r">=(\d+)\.(\d+)(?:\.(\d+))?", floor).groups(default="0"))
    assert found >= gencode, f"pyproject says {floor!r} but the generated code needs protobuf>={'.'.join(map(str, gencode))}"
