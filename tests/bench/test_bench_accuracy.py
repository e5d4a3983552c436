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


def test_the_fused_student_is_compared_with_the_student_alone_at_the_same_threshold():
    def row(method, start, signal, iou, speed, threshold=0.9):
        return {"method": method, "start": start, "signal": signal, "threshold": threshold, "mean_iou": iou,
                "speedup_ms": speed}

    report = {"clips": [
        {"clip": "a", "rows": [row("Flow (fast)", "-", "-", 0.7, 10.0), row("JITNet 0.9", "shipped", "flow/paper", 0.8, 9.0),
                               row("JITNet 0.9", "shipped", "none/paper", 0.75, 9.5)]},
        {"clip": "long", "rows": [row("Flow (fast)", "-", "-", 0.7, 10.0), row("JITNet 0.9", "shipped", "flow/paper", 0.6, 9.0),
                                  row("JITNet 0.9", "shipped", "none/paper", 0.65, 9.5)]},
    ]}
    s = summarise(report)["shipped/flow/paper/0.9"]
    assert s["beats_unfused"] == ["a"] and s["loses_to_unfused"] == ["long"]
    assert s["mean_iou"] == 0.8 and s["long_mean_iou"] == 0.6  # the long stream is reported apart
    assert s["loses_to_flow_fast"] == ["a", "long"]  # more accurate on a, but slower


def test_the_long_stream_letterboxes_every_clip_to_one_size_keeping_labels_on_their_pixels():
    import numpy as np

    from bench.accuracy import LONG_SIZE, letterbox

    wide = np.zeros((136, 320), np.uint8)
    wide[40:60, 100:140] = 2
    out = letterbox(wide, LONG_SIZE, 0)  # cv2.INTER_NEAREST
    assert out.shape == (LONG_SIZE[1], LONG_SIZE[0])
    ys, xs = np.nonzero(out == 2)
    f = LONG_SIZE[0] / 320  # the wide clip fills the width; black bars above and below
    top = (LONG_SIZE[1] - round(136 * f)) // 2
    assert abs(xs.min() - 100 * f) <= 1 and abs(ys.min() - (top + 40 * f)) <= 1
    assert set(np.unique(out)) == {0, 2}
