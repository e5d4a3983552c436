"""Who may knock and how often, on the plain objects (no gRPC, no model): pacing, identity-bound limits, forgetting."""
from __future__ import annotations

import pytest

from teacher_server.auth import ANY_CAMERA, TokenAuth
from teacher_server.limits import CallLimiter, CallLimits, LimitExceeded
from teacher_server.pacing import Pacer, Refusal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hints_double_for_a_camera_that_ignores_them_and_its_refusals_are_held_back() -> None:
    pacer = Pacer(rate=None, max_hint_s=8.0, max_hold_s=1.0, max_held=4, max_held_per_camera=3)
    now = 0.0
    pacer.knock("flood", now)
    assert pacer.refused("flood", 0.5, now) == 0.5  # the queue said no: come back in 0.5 s
    hints, holds = [], []
    for _ in range(8):  # it comes back at once, again and again
        now += 0.01
        with pytest.raises(Refusal) as info:
            pacer.knock("flood", now)
        assert info.value.early
        hints.append(info.value.retry_after_s)
        holds.append(info.value.hold_s)
    assert hints == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert holds[0] == 0.0  # one early call may be an accident: answered at once
    assert holds[1:4] == [1.0, 1.0, 1.0] and holds[4:] == [0.0] * 4  # then held, within the camera's 3 slots
    assert pacer.held == 3
    for _ in range(3):
        pacer.release_hold("flood")
    assert pacer.held == 0
    pacer.knock("other", now)  # another camera is not affected
    assert pacer.on_probation("flood") and not pacer.on_probation("other")


def test_a_camera_that_honours_its_hints_is_never_held_and_leaves_probation() -> None:
    pacer = Pacer(rate=None, max_strikes=3)
    now = 0.0
    pacer.refused("cam", 0.5, now)
    with pytest.raises(Refusal):
        pacer.knock("cam", now + 0.1)  # early once (e.g. a call that crossed the refusal)
    assert pacer.on_probation("cam")
    hint = pacer.refused("cam", 0.2, now + 0.1)
    assert hint == 1.0  # while on probation the grown hint stands
    now += 0.1 + hint
    pacer.knock("cam", now)  # on time: the strike goes
    assert not pacer.on_probation("cam")
    assert pacer.refused("cam", 0.2, now) == 0.2  # and hints are the queue's own again


def test_the_bucket_passes_a_burst_then_the_rate_and_says_when() -> None:
    pacer = Pacer(rate=10.0, burst=5)
    for _ in range(5):
        pacer.knock("cam", 0.0)
    with pytest.raises(Refusal, match="more than 10 calls") as info:
        pacer.knock("cam", 0.0)
    assert info.value.retry_after_s == pytest.approx(0.1)
    pacer.knock("cam", 0.1 + 1e-9)  # one token back after 0.1 s
    assert pacer.bucket == 1


def test_a_stream_is_counted_against_its_cameras_share_when_it_opens() -> None:
    clock = Clock()
    limiter = CallLimiter(CallLimits(max_calls=10, max_calls_per_camera=4, max_streams_per_camera=2, reserved_for_new=0,
                                     rate_per_camera=None), clock=clock)
    streams = [limiter.open("cam-a", stream=True) for _ in range(2)]
    refused = 0
    for _ in range(300):  # a camera opening stream after stream: its own share says no, the server's stays free
        try:
            limiter.open("cam-a", stream=True)
        except LimitExceeded as exc:
            refused += 1
            exc.release()
    assert refused == 300 and limiter.calls == 2
    assert limiter.refused["camera_streams"] >= 1 and limiter.refused["early"] >= 290
    other = limiter.open("cam-b")  # another camera is let in
    for ticket in streams + [other]:
        ticket.release()
    assert limiter.calls == 0 and limiter.held == 0


def test_the_last_slots_are_kept_for_named_cameras_holding_none() -> None:
    clock = Clock()
    limiter = CallLimiter(CallLimits(max_calls=8, max_calls_per_camera=8, reserved_for_new=3, rate_per_camera=None,
                                     retry_after_s=0.0), clock=clock)
    anonymous = []
    with pytest.raises(LimitExceeded, match="kept for cameras holding none"):
        for _ in range(8):  # streams without tokens, camera not known yet
            anonymous.append(limiter.open(None, stream=True))
    assert len(anonymous) == 5
    limiter.open("greedy")  # a named camera holding nothing: from the reserve (6 of 8)
    anonymous[0].release()
    anonymous[1].release()
    limiter.open("greedy")  # 5 of 8: outside the reserve
    with pytest.raises(LimitExceeded, match="kept for cameras holding none"):
        limiter.open("greedy")  # it holds some already: not from the reserve
    limiter.open("newcomer")
    assert limiter.calls == 6


def test_a_stream_opened_before_its_camera_is_known_binds_at_its_first_frame() -> None:
    clock = Clock()
    limiter = CallLimiter(CallLimits(max_calls=10, max_streams_per_camera=1, rate_per_camera=None), clock=clock)
    first, second = limiter.open(None, stream=True), limiter.open(None, stream=True)
    first.bind("cam")
    with pytest.raises(LimitExceeded, match="open streams"):
        second.bind("cam")
    assert limiter.camera_calls("cam") == 1
    first.release()
    clock.now += 10
    second.bind("cam")
    second.release()
    assert limiter.calls == 0 and limiter.camera_calls("cam") == 0


def test_cameras_gone_a_while_are_forgotten_and_busy_ones_kept() -> None:
    clock = Clock()
    limiter = CallLimiter(CallLimits(rate_per_camera=5.0, forget_after_s=10.0), clock=clock)
    for k in range(50):
        limiter.open(f"cam{k}").release()
    busy = limiter.open("busy")
    assert limiter.cameras_known() == 51
    clock.now += 3.0
    assert limiter.sweep() == []  # not gone long enough
    clock.now += 10.0
    assert sorted(limiter.sweep()) == sorted(f"cam{k}" for k in range(50))
    assert limiter.cameras_known() == 1
    busy.release()


def test_a_token_names_its_camera_before_any_message() -> None:
    auth = TokenAuth({"cam-a": "token-of-cam-a", "cam-b": "token-of-cam-b", ANY_CAMERA: "operator-token"})
    assert auth.identify((("authorization", "Bearer token-of-cam-b"),)) == "cam-b"
    assert auth.identify((("authorization", "Bearer operator-token"),)) == ANY_CAMERA
    assert auth.identify((("authorization", "Bearer token-of-cam-"),)) is None
    assert auth.identify(()) is None
    assert auth.allows((("authorization", "Bearer operator-token"),), "cam-z")
    with pytest.raises(ValueError, match="share a token"):
        TokenAuth({"a": "same-token-123", "b": "same-token-123"})
