"""A camera against a remote teacher, the production shape.

On the teacher host:   jitnet teacher --backend yolov7-seg --port 50051 --tokens tokens.txt
On the camera:         python examples/remote_camera.py rtsp://cam/stream --teacher grpc://teacher:50051 --token T

The session starts even if the teacher is down (strict=False): it segments with the
student it has and retries the teacher with back-off; results say the teacher's state.
With a state directory the specialised student survives restarts (saved every minute
and on exit, Ctrl-C and SIGTERM included).
"""
from __future__ import annotations

import argparse
import time
from contextlib import closing

import sdk
from sdk.runner import sigterm_as_interrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="camera index, rtsp:// or http:// URL, or a video file")
    parser.add_argument("--teacher", required=True, help="grpc://host:port (grpcs:// for TLS)")
    parser.add_argument("--token", help="this camera's bearer token, if the teacher asks for one")
    parser.add_argument("--camera-id", default="cam0")
    parser.add_argument("--classes", default="person")
    parser.add_argument("--state", default="state/cam0", help="state directory")
    args = parser.parse_args()

    source = int(args.source) if args.source.isdigit() else args.source
    session = sdk.connect(args.teacher, classes=args.classes, camera_id=args.camera_id, token=args.token,
                          state_dir=args.state, strict=False)
    last = time.monotonic()
    # SIGTERM (systemd, docker stop) ends the loop like Ctrl-C; closing the stream saves the state.
    with session, sigterm_as_interrupt(), closing(session.segment(source)) as results:
        try:
            for r in results:
                # r.labels: uint8 (H, W), 0 = background, k = k-th class; use it here.
                if time.monotonic() - last >= 5.0:
                    last = time.monotonic()
                    print(f"frame {r.index}: stride {r.stride}, teacher {r.teacher_state}, "
                          f"{r.timings['frame_ms']:.0f} ms/frame")
        except KeyboardInterrupt:
            print("stopping; saving state in", args.state)


if __name__ == "__main__":
    main()
