"""What a session sends by default: frames no longer than 640 px (the YOLO teachers' input size, README Bandwidth),
labels back at the frame's size, bytes counted as sent; teacher_max_side=None sends the full frame."""
import pytest

import sdk
from sdk.clips import find_clip
from sdk.streams import read_frames
from tests.edge_agent.fake_teacher import start_fake_teacher


@pytest.mark.parametrize("max_side, sent_hw", [("default", (480, 640)), (None, (576, 768))])
def test_frames_sent_to_the_teacher_are_bounded_by_the_default_max_side(artifacts, max_side, sent_hw):
    frames = read_frames(str(find_clip("vtest")), max_frames=2)  # 768x576, a real camera's size
    teacher = start_fake_teacher()
    options = {} if max_side == "default" else {"teacher_max_side": max_side}
    try:
        with sdk.connect(teacher.url, artifacts=artifacts, **options) as session:
            results = list(session.segment(frames))
    finally:
        teacher.stop()
    seen = teacher.teacher.seen
    assert seen and all(s.image_rgb.shape[:2] == sent_hw for s in seen)
    assert all(r.labels.shape == (576, 768) for r in results)
    assert sum(r.bytes_up for r in results) == sum(s.request_bytes for s in seen)
    assert sum(r.bytes_down for r in results) == sum(s.response_bytes for s in seen)
