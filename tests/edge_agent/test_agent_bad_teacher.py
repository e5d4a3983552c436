"""A teacher that answers nonsense, or a client that breaks, is a counted failure, never the end of segment()."""
import numpy as np
import pytest

from core.config import DistillConfig
from edge_agent.agent import DistillationAgent
from edge_agent.teacher import TeacherRejected
from edge_agent.teacher_client import TeacherClient
from edge_agent.trainer import load_trainer
from tests.edge_agent.agent_helpers import clip_frames
from tests.edge_agent.fake_teacher import FakeTeacher, start_fake_teacher


def _run(agent, frames):
    return [agent.process(i, f) for i, f in enumerate(frames)]


@pytest.mark.parametrize("broken", [dict(label_offset=5), dict(groups=("car", "person"))],
                         ids=["labels-beyond-the-classes", "groups-in-another-order"])
def test_replay_survives_a_teacher_that_answers_unusable_labels(artifacts, broken):
    running = start_fake_teacher(FakeTeacher(**broken))
    trainer = load_trainer(artifacts)
    before = trainer.predict(np.zeros((128, 192, 3), np.uint8))
    frames = clip_frames(12)
    try:
        with TeacherClient(running.url) as teacher:
            agent = DistillationAgent(trainer, teacher, DistillConfig(min_stride=1, max_stride=1))
            results = _run(agent, frames)
    finally:
        running.stop()
    assert len(results) == len(frames)
    assert not any(r.teacher_labelled for r in results) and agent.counters.updates == 0
    assert agent.counters.teacher_failures >= 1
    assert agent.health.state == "rejected" and agent.health.failures == agent.counters.teacher_failures
    # The unusable answers still crossed the network: their bytes are on the frames where they failed.
    assert sum(r.bytes_up for r in results) == sum(s.request_bytes for s in running.teacher.seen) > 0
    assert sum(r.bytes_down for r in results) == sum(s.response_bytes for s in running.teacher.seen) > 0
    assert agent.counters.bytes_up == sum(r.bytes_up for r in results)
    # Backing off: a teacher that always answers badly is not asked on every frame.
    assert len(running.teacher.seen) < len(frames)
    assert {r.teacher_state for r in results[1:]} == {"rejected"}
    assert np.array_equal(trainer.predict(np.zeros((128, 192, 3), np.uint8)), before)  # never trained on it


def test_live_mode_counts_unusable_answers_as_failures(artifacts):
    running = start_fake_teacher(FakeTeacher(label_offset=3))
    trainer = load_trainer(artifacts)
    frames = clip_frames(8)
    try:
        with TeacherClient(running.url) as teacher:
            agent = DistillationAgent(trainer, teacher, DistillConfig(), live=True)
            results = []
            i = 0
            while agent.counters.teacher_failures == 0 and i < 2000:  # until the first answer is judged
                results.append(agent.process(i, frames[i % len(frames)]))
                i += 1
    finally:
        running.stop()
    assert agent.counters.teacher_failures == 1 and agent.health.state == "rejected"
    assert agent.counters.teacher_frames == 0 and agent.counters.updates == 0
    assert sum(r.bytes_up for r in results) == running.teacher.seen[0].request_bytes  # carried, then refused
    assert "label map holds value 4" in agent.health.error


def test_replay_survives_a_client_that_was_closed_under_it(artifacts):
    running = start_fake_teacher()
    trainer = load_trainer(artifacts)
    frames = clip_frames(6)
    try:
        teacher = TeacherClient(running.url)
        teacher.close()  # label() now raises ValueError (not a TeacherError) from grpc
        agent = DistillationAgent(trainer, teacher, DistillConfig(min_stride=1, max_stride=1))
        results = _run(agent, frames)
    finally:
        running.stop()
    assert len(results) == len(frames) and agent.counters.teacher_failures >= 1
    assert results[0].teacher_state == "unavailable"


def test_the_check_names_what_is_wrong():
    from core.labels import TeacherLabels
    from edge_agent.teacher_client import check_answer

    labels = TeacherLabels(0, np.zeros((4, 4), np.uint8), [], ("auto", "person"), "m", "1")
    with pytest.raises(TeacherRejected, match="groups"):
        check_answer(labels, ["person", "auto"])
    check_answer(labels, ["Auto", "person"])
