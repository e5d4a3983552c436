"""One frame check (core.geometry.check_frame): a bad frame gets the same advice wherever it is caught."""
from __future__ import annotations

import numpy as np
import pytest

from core.geometry import Geometry, check_frame
from edge_agent.student import check_image
from edge_agent.teacher_client import encode_frame
from sdk.frames import StreamError, ensure_rgb

BAD = {
    "float": np.zeros((64, 96, 3), np.float32),
    "two channels": np.zeros((64, 96, 2), np.uint8),
    "empty": np.zeros((0, 96, 3), np.uint8),
    "not an array": [[0, 0, 0]],
}


def _message(call, *args, **kwargs) -> str:
    with pytest.raises((TypeError, ValueError)) as info:
        call(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("name", list(BAD))
def test_sources_agent_and_teacher_client_give_the_checks_own_advice(name):
    bad = BAD[name]
    advice = _message(check_frame, bad)
    assert _message(Geometry.for_frame((64, 96)).image, bad) == advice  # the agent's path
    assert _message(encode_frame, bad, "jpeg") == advice                # the teacher client
    with pytest.raises(StreamError) as info:                            # a source's frame, named
        ensure_rgb(bad, where="clip frame 7")
    assert str(info.value) == f"clip frame 7: {advice}"


def test_the_trainer_refuses_what_the_agent_would_convert_with_the_same_words():
    gray = np.zeros((64, 96), np.uint8)
    assert check_frame(gray).shape == (64, 96, 3)
    strict = _message(check_frame, gray, convert=False)
    assert _message(check_image, gray) == strict and "(H, W, 3)" in strict
    assert _message(check_image, BAD["float"]) == _message(check_frame, BAD["float"])
    with pytest.raises(ValueError, match="multiples of 32"):
        check_image(np.zeros((60, 96, 3), np.uint8))


def test_bgr_and_rgba_become_rgb_in_one_contiguous_copy():
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 255, 7  # blue in OpenCV's order, then alpha
    rgb = check_frame(bgra, bgr=True)
    assert rgb.shape == (2, 3, 3) and rgb.flags.c_contiguous
    assert rgb[0, 0].tolist() == [0, 0, 255]
    frame = np.zeros((4, 4, 3), np.uint8)
    assert check_frame(frame) is frame  # a good frame is not copied
