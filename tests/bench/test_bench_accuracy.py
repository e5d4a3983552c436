"""bench accuracy's own arithmetic: frames-to-0.7 and the Flow (fast) comparison."""
from bench.accuracy import frames_to, summarise


def test_frames_to_waits_for_a_full_window_of_scored_frames():
    ious = [0.0, None, 0.9, 0.9, float("nan"), 0.9, 0.2]
    assert frames_to(ious, 0.7, window=3) == 5  # the window (0.9, 0.9, 0.9) first fills at frame 5
    assert frames_to(ious, 0.7, window=4) == 6  # (0.0, 0.9, 0.9, 0.9) averages 0.675; then 0.725
    assert frames_to(ious, 0.8, window=4) is None
    assert frames_to([0.8] * 3, 0.7, window=3) == 2


def test_a_student_beats_flow_fast_only_when_both_more_accurate_and_no_slower():
    def row(method, start, iou, speed):
        return {"method": method, "start": start, "signal": "paper", "threshold": 0.9, "mean_iou": iou,
                "speedup_ms": speed}

    report = {"clips": [
        {"clip": "a", "rows": [row("Flow (fast)", "-", 0.7, 10.0), row("JITNet 0.9", "shipped", 0.8, 10.0)]},
        {"clip": "b", "rows": [row("Flow (fast)", "-", 0.7, 10.0), row("JITNet 0.9", "shipped", 0.8, 9.0)]},
    ]}
    s = summarise(report)["shipped/paper/0.9"]
    assert s["beats_flow_fast"] == ["a"] and s["loses_to_flow_fast"] == ["b"] and s["mean_iou"] == 0.8
