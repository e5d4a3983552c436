"""What a camera sends and receives: bytes counted as they are on the wire, frames shrunk, labels brought back."""
import time

import numpy as np

from edge_agent.teacher_client import TeacherClient, TeacherTimeout, encode_frame, shrink_to_max_side
from protos import teacher_pb2
from tests.edge_agent.agent_helpers import clip_frames
from tests.edge_agent.fake_teacher import BlackHoleProxy, FakeTeacher, start_fake_teacher


def test_bytes_per_teacher_frame_equal_the_encoded_sizes():
    running = start_fake_teacher()
    frame = clip_frames(1, scale=1.0)[0]
    try:
        with TeacherClient(running.url, camera_id="cam7", jpeg_quality=75) as client:
            labels = client.label(frame, ["person"], frame_index=3)
    finally:
        running.stop()
    seen = running.teacher.seen[0]
    expected_up = teacher_pb2.LabelRequest(camera_id="cam7", frame_index=3, groups=["person"],
                                           **encode_frame(frame, "jpeg", 75)).ByteSize()
    assert labels.bytes_up == seen.request_bytes == expected_up
    assert labels.bytes_down == seen.response_bytes > 0


def test_max_side_sends_a_smaller_frame_and_returns_labels_at_the_frame_size():
    running = start_fake_teacher()
    frame = clip_frames(1, scale=1.0)[0]  # 576 x 768
    try:
        with TeacherClient(running.url, max_side=384, jpeg_quality=80) as small, TeacherClient(running.url) as full:
            shrunk = small.label(frame, ["person"], frame_index=0)
            whole = full.label(frame, ["person"], frame_index=0)
    finally:
        running.stop()
    assert running.teacher.seen[0].image_rgb.shape == (288, 384, 3)
    assert shrunk.label_map.shape == frame.shape[:2]
    assert shrunk.bytes_up < whole.bytes_up / 2
    # Labels of the shrunk frame, upsampled, agree with the full-size labels on most pixels.
    assert (shrunk.label_map == whole.label_map).mean() > 0.9
    x0, y0, x1, y1 = shrunk.instances[0].box
    assert x1 > 384 * 1.5 or y1 > 288 * 1.5  # boxes are in frame pixels again
    assert shrink_to_max_side(frame, 1000) is frame


def test_a_link_that_goes_silent_costs_seconds_not_the_whole_timeout():
    running = start_fake_teacher()
    proxy = BlackHoleProxy(running.port)
    frame = clip_frames(1)[0]
    try:
        with TeacherClient(proxy.url, timeout_s=30.0) as client:
            client.label(frame, ["person"], frame_index=0)  # the teacher answers in milliseconds
            proxy.black_hole.set()
            start = time.monotonic()
            try:
                client.label(frame, ["person"], frame_index=1)
                raise AssertionError("a black-holed teacher answered")
            except TeacherTimeout:
                pass
            assert time.monotonic() - start < 8.0  # was 30 s (the whole timeout) before
    finally:
        proxy.close()
        running.stop()


def test_a_teacher_that_became_slow_is_waited_for_again_after_one_timeout():
    teacher = FakeTeacher()
    running = start_fake_teacher(teacher)
    frame = clip_frames(1)[0]
    try:
        with TeacherClient(running.url, timeout_s=30.0, min_deadline_s=1.0) as client:
            client.label(frame, ["person"], frame_index=0)
            teacher.delay_s = 1.5  # now slower than the adaptive bound
            try:
                client.label(frame, ["person"], frame_index=1)
                raise AssertionError("expected one timeout at the adaptive bound")
            except TeacherTimeout:
                pass
            labels = client.label(frame, ["person"], frame_index=2)  # the bound doubled: answered
            assert labels.frame_index == 2
    finally:
        running.stop()
