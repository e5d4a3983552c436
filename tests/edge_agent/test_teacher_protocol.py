"""The agent depends on its Teacher protocol (edge_agent/teacher.py), not on the gRPC transport, and every
teacher the tree hands to an agent takes the keywords that protocol declares (need= included)."""
import inspect
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def test_the_agent_imports_neither_the_grpc_client_nor_grpc():
    code = ("import sys, edge_agent.agent\n"
            "found = [m for m in ('edge_agent.teacher_client', 'grpc', 'protos.teacher_pb2') if m in sys.modules]\n"
            "sys.exit(', '.join(found) or 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"edge_agent.agent pulled in the transport: {proc.stderr.strip()}"


def _teachers():
    from bench.agent import _Metered
    from bench.fleet import SimulatedClient
    from edge_agent.teacher_client import TeacherClient
    from evaluation.teacher_labels import CachedTeacher

    return {"TeacherClient": TeacherClient, "CachedTeacher": CachedTeacher, "bench.agent._Metered": _Metered,
            "bench.fleet.SimulatedClient": SimulatedClient}


@pytest.mark.parametrize("name", sorted(_teachers()))
def test_every_teacher_takes_the_protocols_keywords(name):
    from edge_agent.teacher import Teacher

    cls = _teachers()[name]
    for method in ("label", "submit"):
        declared = [p for p in inspect.signature(getattr(Teacher, method)).parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if not hasattr(cls, method):
            assert "__getattr__" in vars(cls), f"{name} has no {method}()"
            continue  # a wrapper: the wrapped teacher's method answers
        params = inspect.signature(getattr(cls, method)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue  # takes any keyword (e.g. a mode it refuses with a clear error)
        missing = [p.name for p in declared if p.name not in params]
        assert not missing, f"{name}.{method} does not take {missing}"
