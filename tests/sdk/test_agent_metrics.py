"""The agent's /metrics and /healthz, scraped over real HTTP: Prometheus' own parser reads them, counters move,
health says degraded while the teacher or the source is down; `jitnet run` serves them and stops cleanly on SIGTERM."""
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sdk
from tests.conftest import REPO_ROOT
from tests.edge_agent.agent_helpers import clip_frames, free_port
from tests.edge_agent.fake_teacher import start_fake_teacher
from tests.sdk.stream_helpers import Camera, cameras


def scrape(base: str) -> dict[str, float]:
    """Every sample of /metrics as name{labels} -> value, parsed by prometheus_client."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "camera_id")
            out[s.name + (f"{{{extra}}}" if extra else "")] = s.value
    return out


def health(base: str, path: str = "/healthz") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{base}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(check, what: str, timeout_s: float = 30.0):
    """Poll ``check`` until it returns something truthy (a deadline, not a sleep as synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class Segmenting:
    """session.segment() in a thread, the way an agent runs while something else scrapes it."""

    def __init__(self, session, source, **kwargs) -> None:
        self.results, self.error, self.stop = [], None, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(session, source, kwargs), daemon=True)
        self._thread.start()

    def _run(self, session, source, kwargs) -> None:
        try:
            for r in session.segment(source, **kwargs):
                self.results.append(r)
                if self.stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc

    def join(self) -> None:
        self.stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        assert self.error is None, self.error


def test_metrics_parse_and_their_counters_move_while_health_follows_the_teacher(artifacts):
    teacher = start_fake_teacher()
    frames = list(clip_frames(40, 0.25)) * 50  # 2000 frames: enough to outlast the test
    try:
        with sdk.connect(teacher.url, artifacts=artifacts, metrics_port=0, metrics_host="127.0.0.1",
                         teacher_timeout_s=2.0) as session:
            base = session.metrics.url
            status, body = health(base)
            assert status == 200 and body["alive"]  # up before the first frame
            run = Segmenting(session, frames, live=False)
            first = wait_for(lambda: (m := scrape(base))["jitnet_agent_teacher_frames_total"] >= 1 and m,
                             "a teacher frame")
            second = wait_for(lambda: (m := scrape(base))["jitnet_agent_frames_total"]
                              >= first["jitnet_agent_frames_total"] + 10 and m, "10 more frames")
            assert second["jitnet_agent_updates_total"] >= 1
            assert second["jitnet_agent_bytes_up_total"] > 0 and second["jitnet_agent_bytes_down_total"] > 0
            assert second["jitnet_agent_inference_seconds_total"] > first["jitnet_agent_inference_seconds_total"]
            assert second["jitnet_agent_fps"] > 0 and second["jitnet_agent_stride"] >= 1
            assert 0 <= second["jitnet_agent_last_accuracy"] <= 1
            assert second["jitnet_agent_teacher_state{state=ok}"] + second["jitnet_agent_teacher_state{state=waiting}"] == 1
            assert second["jitnet_agent_source_state{state=ok}"] == 1
            status, body = health(base)
            assert status == 200 and body["status"] == "ok" and body["alive"]
            assert health(base, "/readyz")[0] == 200

            teacher.stop()  # the teacher goes away: the agent keeps segmenting, health says degraded
            status, body = wait_for(lambda: (h := health(base))[1]["status"] == "degraded" and h,
                                    "health to turn degraded", timeout_s=60)
            assert status == 200 and body["teacher_state"] == "unavailable"  # alive, so not restarted
            assert health(base, "/readyz")[0] == 503
            after = scrape(base)
            assert after["jitnet_agent_teacher_failures_total"] >= 1
            assert after["jitnet_agent_teacher_state{state=unavailable}"] == 1
            run.join()
            # what was served is what the frames said
            final = scrape(base)
            assert final["jitnet_agent_frames_total"] == len(run.results)
            assert final["jitnet_agent_bytes_up_total"] == sum(r.bytes_up for r in run.results)
            assert final["jitnet_agent_updates_total"] == sum(r.updates for r in run.results)
    finally:
        teacher.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", cameras())
def test_health_is_degraded_while_the_source_reconnects(artifacts, kind):
    camera = Camera(kind).start()
    try:
        with sdk.connect(None, artifacts=artifacts, metrics_port=0, metrics_host="127.0.0.1", stall_s=2.0) as session:
            base = session.metrics.url
            run = Segmenting(session, camera.url, resize=0.5)
            wait_for(lambda: scrape(base)["jitnet_agent_frames_total"] >= 5, "frames from the camera")
            assert health(base)[1]["status"] == "ok"
            camera.kill()
            _, body = wait_for(lambda: (h := health(base))[1]["source_state"] == "reconnecting" and h,
                               "the source to be reconnecting")
            assert body["status"] == "degraded" and health(base, "/readyz")[0] == 503
            assert scrape(base)["jitnet_agent_source_state{state=reconnecting}"] == 1
            camera.start()
            wait_for(lambda: scrape(base)["jitnet_agent_reconnects_total"] == 1, "the reconnect", timeout_s=60)
            frames_back = scrape(base)["jitnet_agent_frames_total"]
            wait_for(lambda: scrape(base)["jitnet_agent_frames_total"] > frames_back, "frames after the reconnect")
            assert health(base)[1]["status"] == "ok"
            run.join()
    finally:
        camera.kill()


def test_jitnet_run_serves_metrics_and_exits_cleanly_on_sigterm(artifacts, tmp_path):
    """What a supervisor sees: a scrapeable agent, and SIGTERM (docker stop, systemd) is a clean stop, exit 0."""
    from sdk.clips import first_available

    teacher = start_fake_teacher()
    port, log = free_port(), tmp_path / "frames.jsonl"
    clip = str(first_available(("vtest", "bikes")))
    cmd = [sys.executable, "-m", "cli.main", "run", clip, "--teacher", teacher.url, "--artifacts", str(artifacts),
           "--live", "--metrics-port", str(port), "--log", str(log), "--scale", "0.5", "--no-progress",
           "--summary", str(tmp_path / "summary.json")]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def frames_served():
            if proc.poll() is not None:
                pytest.fail(f"jitnet run ended early: {proc.stdout.read()[-3000:]}")
            try:
                return scrape(base)["jitnet_agent_frames_total"] >= 10
            except OSError:  # not listening yet
                return False

        wait_for(frames_served, "jitnet run to serve 10 frames", timeout_s=120)
        assert health(base)[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        teacher.stop()
    assert proc.returncode == 0, out[-3000:]
    assert "terminated (SIGTERM)" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["terminated"] and summary["frames"] == sum(1 for _ in open(log)) >= 10
