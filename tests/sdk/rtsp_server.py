"""A real RTSP camera for tests: GStreamer's RTSP server looping a clip at rtsp://127.0.0.1:PORT/cam.

Run by the system python3 (Debian's python3-gi, gir1.2-gst-rtsp-server-1.0;
`.ci/run` installs them):  /usr/bin/python3 tests/sdk/rtsp_server.py CLIP PORT
It prints "ready" once it listens.  The clip is decoded and re-encoded to H.264 live.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

clip, port = sys.argv[1], sys.argv[2]
Gst.init(None)
server = GstRtspServer.RTSPServer.new()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory.new()
factory.set_launch(
    f"( multifilesrc location={clip} loop=true ! decodebin ! videoconvert ! videorate ! video/x-raw,framerate=10/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit(f"could not listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
