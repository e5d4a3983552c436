"""`embedded` names one teacher everywhere: the SDK's connect() and the evaluations read the same spec."""
from __future__ import annotations

from evaluation.teacher_labels import TeacherSource
from sdk.embedded import EMBEDDED_TEACHER, embedded_teacher


def test_embedded_alone_runs_the_same_teacher_in_the_sdk_and_the_evaluations():
    assert EMBEDDED_TEACHER == "yolov7-seg"
    for spec in ("embedded", " embedded ", "embedded:"):
        assert embedded_teacher(spec) == TeacherSource(spec).backend_name == EMBEDDED_TEACHER


def test_a_named_backend_is_used_and_a_url_or_lookalike_is_not_embedded():
    assert embedded_teacher("embedded:yolov5s-seg") == TeacherSource("embedded:yolov5s-seg").backend_name == "yolov5s-seg"
    for spec in ("grpc://127.0.0.1:50051", "embeddedx", None):
        assert embedded_teacher(spec) is None
    assert not TeacherSource("grpc://127.0.0.1:50051").embedded
