"""`jitnet eval stream` on a short real clip with a real teacher: every method, the cache, the reports.

One full run (teacher yolov5s-seg labelling every frame, online distillation at
0.8 and every baseline, few updates to stay CPU-sized) is shared by the tests;
a second run must take every label from the cache and never label a frame.
"""
from __future__ import annotations

import json

import cv2
import pytest

from cli.main import main
from sdk.clips import first_available

N_FRAMES = 24


def _eval(tmp, artifacts, cache, name, *extra):
    out = tmp / f"{name}.json"
    argv = ["eval", "stream", str(first_available(("vtest", "bikes"))), "--teacher", "embedded:yolov5s-seg",
            "--classes", "person", "--frames", str(N_FRAMES), "--scale", "0.5", "--artifacts", str(artifacts),
            "--cache", str(cache), "--json", str(out), *extra]
    assert main(argv) == 0
    return json.loads(out.read_text()), out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, artifacts):
    tmp = tmp_path_factory.mktemp("stream")
    cache = tmp / "labels"
    report, out = _eval(tmp, artifacts, cache, "full", "--thresholds", "0.8", "--max-updates", "2",
                        "--first-frame-updates", "4", "--oracle-epochs", "1", "--video", str(tmp / "overlay.mp4"))
    return tmp, cache, report, out


def test_first_run_labels_every_frame_with_the_teacher(first_run):
    _, _, report, _ = first_run
    assert report["frames"] == N_FRAMES
    assert report["label_cache"] == {**report["label_cache"], "hits": 0, "misses": N_FRAMES}
    assert report["teacher"]["frames_labelled_this_run"] == N_FRAMES
    assert report["teacher"]["model_name"] == "yolov5s-seg"
    assert report["teacher"]["ms_per_frame"] > 0
    assert "this run" in report["teacher"]["ms_source"]


def test_second_run_takes_every_label_from_the_cache(first_run, artifacts):
    tmp, cache, first, _ = first_run
    entry = next(p for p in cache.iterdir() if p.is_dir())
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.glob("*.npz")}
    report, _ = _eval(tmp, artifacts, cache, "again", "--methods", "flow-fast", "--no-plot")
    assert report["label_cache"]["hits"] == N_FRAMES and report["label_cache"]["misses"] == 0
    assert report["teacher"]["frames_labelled_this_run"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in entry.glob("*.npz")} == stamps
    # the cost model still has the teacher's cost, as measured when the labels were made
    assert report["teacher"]["ms_per_frame"] == pytest.approx(first["teacher"]["ms_per_frame"])
    assert "label cache" in report["teacher"]["ms_source"]
    # the same labels: the flow baseline scores exactly as in the first run
    fast = lambda r: next(x for x in r["runs"] if x["method"] == "Flow (fast)")  # noqa: E731
    assert fast(report)["per_frame_iou"] == fast(first)["per_frame_iou"]


def _run(report, method):
    return next(r for r in report["runs"] if r["method"] == method)


def test_every_method_runs_on_the_same_frames_with_numbers_in_range(first_run):
    _, _, report, _ = first_run
    names = [r["method"] for r in report["runs"]]
    stride = report["fixed_stride"]
    assert names == ["JITNet 0.8", "JITNet 0.8 unfused", "Flow (slow)", "Flow (fast)", "Offline oracle", "No adaptation",
                     f"Fixed stride {stride}"]
    for r in report["runs"]:
        assert r["frames"] == N_FRAMES and len(r["per_frame_iou"]) == N_FRAMES, r["method"]
        assert 0.0 <= r["mean_iou"] <= 1.0, r["method"]
        assert 0.0 <= r["teacher_fraction"] <= 1.0, r["method"]
        assert r["speedup_ms"] is not None and r["speedup_ms"] > 0, r["method"]
        assert all(v is None or 0.0 <= v <= 1.0 for v in r["per_frame_iou"])
    online = _run(report, "JITNet 0.8")
    assert online["teacher_indices"][0] == 0 and online["updates"] <= 2 * online["teacher_frames"]
    assert online["speedup_flops"] > 0 and online["infer_ms"] > 0
    assert _run(report, "Flow (slow)")["teacher_indices"] == list(range(0, N_FRAMES, 8))
    assert _run(report, "Flow (fast)")["teacher_indices"] == list(range(0, N_FRAMES, 16))
    assert _run(report, "Flow (fast)")["flow_ms"] > 0
    assert _run(report, "Offline oracle")["teacher_frames"] == len(range(0, N_FRAMES, 5))
    assert _run(report, "No adaptation")["teacher_indices"] == [0]
    assert stride == max(1, round(N_FRAMES / online["teacher_frames"]))
    assert _run(report, f"Fixed stride {stride}")["teacher_indices"] == list(range(0, N_FRAMES, stride))
    # Flow carries the teacher's own labels on a static camera: measured 0.63 / 0.52 on vtest.
    assert _run(report, "Flow (slow)")["mean_iou"] > 0.3
    # Costs: FLOPs of both models, and the teacher costs far more than the student.
    assert report["teacher"]["gflops"]["gflops"] > 5 * report["student"]["gflops"]["infer_gflops"]
    assert report["student"]["how"] == "--artifacts" and report["student"]["from_init"] is False


def test_reports_table_plot_and_overlay_video(first_run):
    tmp, _, report, out = first_run
    md = out.with_suffix(".md").read_text()
    assert "| Method | person IoU | Mean IoU | Teacher frames | Updates | Speedup (time) | Speedup (FLOPs) |" in md
    assert md.count("\n| ") >= 1 + len(report["runs"])
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cap = cv2.VideoCapture(str(tmp / "overlay.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, img = cap.read()
    cap.release()
    assert frames == N_FRAMES and ok
    h, w = report["frame_size"]
    assert img.shape[0] == h and img.shape[1] > 2 * w  # teacher | student


def test_teacher_behind_a_url_labels_over_grpc_and_shares_the_cache(first_run, artifacts):
    from teacher_server.server import start_server

    tmp, cache, first, _ = first_run
    handle = start_server("yolov5s-seg", port=0, max_batch=1, warmup=False)
    try:
        url = handle.url
        # Same model, same threshold: the embedded teacher's labels are this server's too.
        same, _ = _eval(tmp, artifacts, cache, "url-same", "--teacher", url, "--methods", "flow-fast", "--no-plot")
        assert same["label_cache"]["hits"] == N_FRAMES and same["teacher"]["frames_labelled_this_run"] == 0
        # Another score threshold is another key: 8 frames are labelled over gRPC.
        other, _ = _eval(tmp, artifacts, cache, "url-other", "--teacher", url, "--score-threshold", "0.7",
                         "--frames", "8", "--methods", "flow-fast", "--no-plot")
    finally:
        handle.stop(grace=1.0)
    assert other["label_cache"]["misses"] == 8 and other["teacher"]["frames_labelled_this_run"] == 8
    assert other["teacher"]["model_name"] == "yolov5s-seg" and other["teacher"]["spec"] == url
    assert other["runs"][0]["frames"] == 8 and other["runs"][0]["teacher_indices"] == [0]
