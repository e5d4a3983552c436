"""The agent's view of a failing teacher: back off exponentially, and longer when the server asks."""
import grpc

from edge_agent.agent import TeacherAvailability
from edge_agent.teacher import TeacherRejected, TeacherUnavailable


def test_failures_back_off_exponentially_up_to_a_cap_and_success_resets():
    health = TeacherAvailability(first_s=0.5, max_s=4.0)
    waits = []
    for _ in range(6):
        health.failed(TeacherUnavailable("down", grpc.StatusCode.UNAVAILABLE), now=100.0)
        waits.append(health.retry_at - 100.0)
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert health.state == "unavailable" and not health.ready(101.0) and health.ready(104.0)
    health.ok()
    assert health.state == "ok" and health.ready(0.0) and health.error is None


def test_an_overloaded_teachers_retry_after_is_honoured():
    health = TeacherAvailability(first_s=0.5, max_s=30.0)
    health.failed(TeacherUnavailable("full", grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=7.0), now=0.0)
    assert health.retry_at == 7.0
    # A hint shorter than the back-off does not shorten it; a huge one is capped.
    health.failed(TeacherUnavailable("full", grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=0.1), now=0.0)
    assert health.retry_at == 1.0
    health.failed(TeacherUnavailable("full", grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=3600.0), now=0.0)
    assert health.retry_at == 30.0


def test_a_refusal_is_reported_as_rejected():
    health = TeacherAvailability()
    health.failed(TeacherRejected("bad token", grpc.StatusCode.UNAUTHENTICATED), now=0.0)
    assert health.state == "rejected" and "bad token" in health.error
