"""Real network cameras for the stream tests: GStreamer's RTSP server and ffmpeg's HTTP live stream."""
import shutil
import subprocess
from pathlib import Path

import pytest

from sdk.clips import find_clip
from tests.edge_agent.agent_helpers import free_port

RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def _has_rtsp_server() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True)
    return probe.returncode == 0


class Camera:
    """A real network camera process serving the demo clip, which a test can kill and start again."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        try:
            self.clip = str(find_clip("vtest"))
        except Exception as exc:  # noqa: BLE001 - no demo clip: `python -m sdk.clips fetch`
            pytest.skip(str(exc))
        self.port = free_port()
        self.proc = None
        self.url = f"{kind}://127.0.0.1:{self.port}/cam"

    def start(self) -> "Camera":
        if self.kind == "rtsp":
            self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), self.clip, str(self.port)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            line = self.proc.stdout.readline().strip()
            if line != "ready":
                self.kill()
                raise RuntimeError(f"the RTSP server did not start (said {line!r})")
        else:  # ffmpeg listens, and serves the clip in real time to the first client that connects
            self.proc = subprocess.Popen(
                ["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", self.clip, "-c:v", "mpeg2video",
                 "-q:v", "5", "-f", "mpegts", "-listen", "1", self.url],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def cameras():
    """The camera kinds as pytest params, each skipped with the reason when its server is not installed."""
    out = []
    out.append(pytest.param("rtsp", marks=pytest.mark.skipif(not _has_rtsp_server(), reason=(
        "GStreamer's RTSP server is not installed: `make test` installs it when run as root, "
        "`sudo make test-deps` installs it otherwise (Debian/Ubuntu apt; the list is the Makefile's TEST_APT_PACKAGES)"))))
    out.append(pytest.param("http", marks=pytest.mark.skipif(shutil.which("ffmpeg") is None, reason=(
        "ffmpeg is not installed: `make test` installs it when run as root, `sudo make test-deps` otherwise"))))
    return out
