"""Reading any folder in the DAVIS layout, so the DAVIS evaluation runs on any such data.

Layout (DAVIS 2016 as shipped, and the 2017 layout with a resolution folder):

    ROOT/JPEGImages/[480p/]<sequence>/00000.jpg ...
    ROOT/Annotations/[480p/]<sequence>/00000.png ...

Frames are matched to masks by file stem.  A mask is the object wherever the
PNG is non-zero (DAVIS 2016 has one object per sequence).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, Union, overload

import cv2
import numpy as np

log = logging.getLogger(__name__)

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".png",)
#: Resolution sub-folders of the DAVIS 2017 layout, preferred in this order.
RESOLUTIONS = ("480p", "Full-Resolution", "1080p")


class DavisLayoutError(ValueError):
    """The folder is not in the DAVIS layout, or a sequence in it is incomplete."""


def _dirs(root: Union[str, Path], resolution: Optional[str] = None) -> tuple[Path, Path]:
    """(JPEGImages dir, Annotations dir) holding the sequence folders."""
    root = Path(root)
    images, annotations = root / "JPEGImages", root / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise DavisLayoutError(
            f"{root} is not a DAVIS root: expected {images} and {annotations} with one folder per sequence "
            "(JPEGImages/<seq>/00000.jpg, Annotations/<seq>/00000.png); pass the folder that contains both"
        )
    choices = [resolution] if resolution else [r for r in RESOLUTIONS if (images / r).is_dir()]
    for res in choices:
        if (images / res).is_dir() and (annotations / res).is_dir():
            return images / res, annotations / res
        if resolution:
            raise DavisLayoutError(f"no {res!r} resolution folder under both {images} and {annotations}")
    return images, annotations


def _files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def list_sequences(root: Union[str, Path], resolution: Optional[str] = None) -> list[str]:
    """Names of the sequences that have both frames and annotations, sorted."""
    images, annotations = _dirs(root, resolution)
    names = sorted(p.name for p in images.iterdir() if p.is_dir() and (annotations / p.name).is_dir())
    missing = sorted(p.name for p in images.iterdir() if p.is_dir() and not (annotations / p.name).is_dir())
    if missing:
        log.warning("sequences without annotations are skipped: %s", ", ".join(missing))
    if not names:
        raise DavisLayoutError(f"no sequence folder with both frames and annotations under {images} and {annotations}")
    return names


def read_frame(path: Union[str, Path]) -> np.ndarray:
    """An image file as an RGB uint8 array (the project's frame convention)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DavisLayoutError(f"cannot decode image {path}; the file is missing or corrupt")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: Union[str, Path]) -> np.ndarray:
    """An annotation PNG as a bool mask: non-zero (any channel) is the object."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DavisLayoutError(f"cannot decode annotation {path}; the file is missing or corrupt")
    return img.any(axis=2) if img.ndim == 3 else img != 0


class LazyFrames(Sequence[np.ndarray]):
    """Frames decoded when indexed, so a long sequence does not sit in memory."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [read_frame(p) for p in self.paths[index]]
        return read_frame(self.paths[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        for p in self.paths:
            yield read_frame(p)


class DavisSequence(NamedTuple):
    """Frames (RGB uint8, a list or LazyFrames) and masks (bool) of one sequence, in order."""

    frames: Sequence[np.ndarray]
    masks: list[np.ndarray]


def sequence_paths(root: Union[str, Path], name: str, resolution: Optional[str] = None) -> tuple[list[Path], list[Path]]:
    """Frame and mask paths of a sequence, paired by file stem; raises on any mismatch."""
    images, annotations = _dirs(root, resolution)
    if not (images / name).is_dir() or not (annotations / name).is_dir():
        available = ", ".join(list_sequences(root, resolution))
        raise DavisLayoutError(f"sequence {name!r} not found under {root}; available: {available}")
    frames = _files(images / name, FRAME_SUFFIXES)
    masks = _files(annotations / name, MASK_SUFFIXES)
    if not frames:
        raise DavisLayoutError(f"no frames ({'/'.join(FRAME_SUFFIXES)}) in {images / name}")
    if frames.keys() != masks.keys():
        only_frames = sorted(frames.keys() - masks.keys())
        only_masks = sorted(masks.keys() - frames.keys())
        raise DavisLayoutError(
            f"sequence {name!r}: {len(frames)} frames but {len(masks)} masks; "
            f"frames without a mask: {only_frames[:5]}{'...' if len(only_frames) > 5 else ''}, "
            f"masks without a frame: {only_masks[:5]}{'...' if len(only_masks) > 5 else ''}. "
            "The DAVIS protocol needs a ground-truth mask for every frame"
        )
    stems = sorted(frames)
    return [frames[s] for s in stems], [masks[s] for s in stems]


def load_sequence(
    root: Union[str, Path], name: str, *, lazy: bool = False, resolution: Optional[str] = None
) -> DavisSequence:
    """Frames and masks of one sequence; ``lazy`` decodes frames only when indexed.

    Masks are always loaded (they are small and every evaluation needs all
    of them); the first frame is decoded even when lazy, to check that frame
    and mask sizes agree before any work is done.
    """
    frame_paths, mask_paths = sequence_paths(root, name, resolution)
    masks = [read_mask(p) for p in mask_paths]
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise DavisLayoutError(f"sequence {name!r}: masks of different sizes {sorted(shapes)}")
    frames: Sequence[np.ndarray] = LazyFrames(frame_paths) if lazy else [read_frame(p) for p in frame_paths]
    for i, frame in enumerate([frames[0]] if lazy else frames):
        if frame.shape[:2] != masks[0].shape:
            raise DavisLayoutError(
                f"sequence {name!r}: frame {frame_paths[i].name} is {frame.shape[1]}x{frame.shape[0]} but masks are "
                f"{masks[0].shape[1]}x{masks[0].shape[0]}; frames and annotations must share a resolution"
            )
    return DavisSequence(frames, masks)
