"""Bad frames from the caller or on disk: a clear error, or a skip the log tells about once in a while.

A None in an iterable is the caller's bug and raises, naming the frame; an
undecodable image in a folder is skipped, and what libjpeg/libpng would have
printed on stderr for every one of them goes into a rate-limited warning.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import DAVIS_ROOT, REPO_ROOT, load_davis_frame
from core.codec_messages import RateLimitedWarning, quiet_decode
from sdk.streams import StreamError, open_stream

# Raw codec lines as libjpeg / libpng print them, never through our logging.
CODEC_LINE_STARTS = ("Premature end of JPEG", "Corrupt JPEG", "libpng")


@pytest.fixture(scope="module")
def davis_frames(davis_root):
    return [load_davis_frame("blackswan", i)[0] for i in range(3)]


@pytest.mark.parametrize("live", [False, True])
def test_a_none_in_an_iterable_raises_naming_the_frame_instead_of_ending_the_stream(davis_frames, live):
    frames = [davis_frames[0], davis_frames[1], None, davis_frames[2]]
    got = []
    with open_stream(iter(frames), live=live, fps=500, buffer_size=8) as stream:
        with pytest.raises(StreamError, match=r"frame 2: got None instead of an image") as info:
            for frame in stream:
                got.append(frame.index)
    assert got == [0, 1]
    assert "stop iterating to end it" in str(info.value)


def test_segment_raises_on_a_none_frame_instead_of_ending_silently(artifacts, davis_frames):
    import cv2

    import sdk

    small = [cv2.resize(f, (192, 128)) for f in davis_frames]
    seen = []
    with sdk.connect(None, artifacts=artifacts, threads=1) as session:
        with pytest.raises(StreamError, match="frame 1: got None"):
            for result in session.segment([small[0], None, small[1]]):
                seen.append(result.index)
    assert seen == [0]


def _damaged_folder(tmp_path, good: int, truncated: int, bad_crc: int, garbage: int):
    """Real DAVIS JPEGs, some cut in half (decodes, libjpeg warns), some PNGs with a broken CRC and some
    files that are not images at all (neither decodes; libpng complains about the first kind)."""
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    sources = sorted((DAVIS_ROOT / "JPEGImages" / "blackswan").glob("*.jpg"))
    kinds = ["good"] * good + ["truncated"] * truncated + ["crc"] * bad_crc + ["garbage"] * garbage
    rng = np.random.default_rng(0)
    rng.shuffle(kinds)
    kinds[0] = "good"  # the first frame decodes: the stream starts with a real frame
    for i, kind in enumerate(kinds):
        src = sources[i % len(sources)]
        if kind == "good":
            shutil.copy(src, folder / f"{i:05d}.jpg")
        elif kind == "truncated":
            data = src.read_bytes()
            (folder / f"{i:05d}.jpg").write_bytes(data[: len(data) // 2])
        elif kind == "crc":
            ok, png = cv2.imencode(".png", cv2.imread(str(src))[:64, :64])
            png = bytearray(png.tobytes())
            png[60] ^= 0xFF  # inside the first IDAT: its CRC no longer matches
            (folder / f"{i:05d}.png").write_bytes(bytes(png))
        else:
            (folder / f"{i:05d}.jpg").write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 10)
    return folder, kinds


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


def test_damaged_images_in_a_folder_keep_stderr_clean_and_warn_at_a_bounded_rate(davis_root, tmp_path):
    folder, kinds = _damaged_folder(tmp_path, good=10, truncated=15, bad_crc=15, garbage=10)
    # The files are damaged the way the issue saw: read plainly, the codecs print a line per bad image.
    plain = _run(f"""
        import cv2, pathlib
        for p in sorted(pathlib.Path({str(folder)!r}).iterdir()):
            cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        """)
    assert plain.returncode == 0, plain.stderr[-2000:]
    raw_lines = [line for line in plain.stderr.splitlines() if line.startswith(CODEC_LINE_STARTS)]
    assert len(raw_lines) >= kinds.count("truncated") + kinds.count("crc")

    streamed = _run(f"""
        import json, logging, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(name)s: %(message)s")
        from sdk.streams import open_stream
        with open_stream({str(folder)!r}) as stream:
            indices = [f.index for f in stream]
        print(json.dumps({{"indices": indices, "stats": stream.stats.as_dict()}}))
        """)
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    out = json.loads(streamed.stdout)
    lines = streamed.stderr.splitlines()
    assert not [line for line in lines if line.startswith(CODEC_LINE_STARTS)], streamed.stderr[-2000:]
    assert all(line.startswith("LOG ") for line in lines), streamed.stderr[-2000:]
    # 40 damaged images in well under 10 s: the first warning and one count at the end, nothing else.
    assert len(lines) == 2, lines
    assert "more like it are counted" in lines[0]
    assert "more like the last warning were not logged" in lines[1]
    undecodable = [i for i, k in enumerate(kinds) if k in ("crc", "garbage")]
    assert out["stats"]["skipped"] == len(undecodable)
    assert out["indices"] == [i for i in range(len(kinds)) if i not in undecodable]  # skipped ones are gaps


def test_a_folder_where_no_image_decodes_is_an_error(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    with open_stream(folder) as stream:
        with pytest.raises(StreamError, match="none of its 3 images could be decoded"):
            list(stream)


def test_quiet_decode_keeps_codec_lines_and_passes_other_stderr_output_through(capfd):
    def noisy(value):
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\nanother thread's line\n")
        return value * 2

    result, messages = quiet_decode(noisy, 21)
    err = capfd.readouterr().err
    assert result == 42
    assert messages == ["libpng warning: iCCP: known incorrect sRGB profile"]
    assert err == "another thread's line\n"


def test_quiet_decode_restores_stderr_when_the_decode_raises(capfd):
    def broken():
        os.write(2, b"Premature end of JPEG file\n")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        quiet_decode(broken)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_rate_limited_warning_logs_once_per_interval_with_the_count(caplog):
    now = [0.0]
    warning = RateLimitedWarning(logging.getLogger("test.rate"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        logged = []
        for _ in range(100):  # 100 bad frames, 4 a second: logged at t = 0, 10 and 20 s only
            logged.append(warning.warn("bad frame"))
            now[0] += 0.25
        warning.flush()
    assert [i for i, was in enumerate(logged) if was] == [0, 40, 80]
    assert [r.getMessage() for r in caplog.records] == [
        "bad frame (more like it are counted and logged at most every 10 s)",
        "bad frame (39 more like it in the last 10 s)",
        "bad frame (39 more like it in the last 10 s)",
        "19 more like the last warning were not logged (100 in all)",
    ]
    assert warning.total == 100
