"""Seeing what the student (or the teacher) predicts: coloured overlays and videos.

Label maps follow the project's convention: uint8 (H, W), 0 = background
(left transparent), k = the k-th requested class group, so ``class_names[k-1]``
names label k.  Images are RGB uint8; the writer converts to BGR for OpenCV.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: 20 colours that stay distinguishable (Sasha Trubetskoy's list); label k uses
#: PALETTE[(k - 1) % 20 + 1], row 0 is the (transparent) background.
PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.uint8,
)


def color_lut(palette: Optional[np.ndarray] = None) -> np.ndarray:
    """(256, 3) uint8 colour per label value, wrapping the palette past its end."""
    palette = PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 2:
        raise ValueError(f"palette must be (N >= 2, 3) RGB rows with row 0 for background, got {palette.shape}")
    n = len(palette) - 1
    idx = np.concatenate([[0], (np.arange(1, 256) - 1) % n + 1])
    return palette[idx]


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{what} must be RGB uint8 (H, W, 3), got {dtype} {shape}")
    if image.size == 0:
        raise ValueError(f"{what} is empty")
    return image


def _labels_for(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Integer (H, W) labels at the image's size (the student may run at a smaller scale)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer (H, W) map, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label values must be in 0..255, got {labels.min()}..{labels.max()}")
    labels = labels.astype(np.uint8, copy=False)
    h, w = image.shape[:2]
    if labels.shape != (h, w):
        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    return labels


def colorize(labels: np.ndarray, palette: Optional[np.ndarray] = None) -> np.ndarray:
    """RGB picture of a label map (background black)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got {labels.shape}")
    return color_lut(palette)[labels.astype(np.uint8)]


def overlay(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.5,
    class_names: Optional[Sequence[str]] = None,
    legend: Optional[bool] = None,
    palette: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Blend class colours over the frame; background pixels stay untouched.

    ``labels`` of another size are resized (nearest) to the frame.  The legend
    (on by default when ``class_names`` is given) lists every named class, so
    it does not jump around from frame to frame.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = _check_image(image_rgb)
    labels = _labels_for(image, labels)
    lut = color_lut(palette)
    out = image.copy()
    mask = labels > 0
    if mask.any():
        colours = lut[labels[mask]].astype(np.float32)
        out[mask] = np.clip(np.rint((1 - alpha) * image[mask] + alpha * colours), 0, 255).astype(np.uint8)
    if legend is None:
        legend = class_names is not None
    if legend:
        if not class_names:
            raise ValueError("legend=True needs class_names (class_names[k-1] names label k)")
        out = draw_legend(out, class_names, palette=palette)
    return out


def draw_legend(image_rgb: np.ndarray, class_names: Sequence[str], *, palette: Optional[np.ndarray] = None) -> np.ndarray:
    """Swatch + name per class in the top-left corner, on a darkened panel."""
    out = _check_image(image_rgb).copy()
    lut = color_lut(palette)
    h, w = out.shape[:2]
    scale = max(0.35, min(0.8, h / 900))
    thickness = 1
    (_, th), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    row = th + 8
    swatch = th + 2
    width = max(cv2.getTextSize(str(n), cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for n in class_names)
    panel_w = min(w, width + swatch + 18)
    panel_h = min(h, row * len(class_names) + 6)
    out[:panel_h, :panel_w] = (out[:panel_h, :panel_w] * 0.35).astype(np.uint8)
    for k, name in enumerate(class_names, start=1):
        y = 4 + (k - 1) * row
        if y + swatch > h:
            break
        colour = tuple(int(c) for c in lut[k])
        cv2.rectangle(out, (5, y), (5 + swatch, y + swatch), colour, -1)
        cv2.putText(out, str(name), (11 + swatch, y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def side_by_side(*images: np.ndarray, titles: Optional[Sequence[str]] = None, gap: int = 8) -> np.ndarray:
    """Images in a row (e.g. teacher | student), titled, at the first one's height."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    images = tuple(_check_image(im, f"image {i}") for i, im in enumerate(images))
    height = images[0].shape[0]
    panels = []
    for i, im in enumerate(images):
        if im.shape[0] != height:
            width = max(1, round(im.shape[1] * height / im.shape[0]))
            im = cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA)
        if titles is not None:
            im = _with_title(im, str(titles[i]))
        panels.append(im)
    if gap > 0 and len(panels) > 1:
        spacer = np.zeros((panels[0].shape[0], gap, 3), np.uint8)
        panels = [p for pair in zip(panels, [spacer] * len(panels)) for p in pair][:-1]
    return np.ascontiguousarray(np.concatenate(panels, axis=1))


def result_caption(result: Any) -> str:
    """One line about where a frame's labels came from: the teacher, its carried answer, or the student."""
    if result.teacher_labelled and result.teacher_index == result.index:
        source = "teacher"
    elif result.carried_age is not None and result.carried_fraction > 0:
        source = f"carried teacher answer on {100 * result.carried_fraction:.0f}% (age {result.carried_age}), student elsewhere"
    else:
        source = "student"
    cut = " | scene cut" if getattr(result, "scene_cut", False) else ""
    return f"frame {result.index} | {source} | stride {result.stride} | teacher {result.teacher_state}{cut}"


def with_caption(image: np.ndarray, caption: str) -> np.ndarray:
    """``image`` with ``caption`` in a bar above it (the bar's height does not depend on the text)."""
    return _with_title(image, caption)


def _with_title(image: np.ndarray, title: str) -> np.ndarray:
    scale = max(0.45, min(1.0, image.shape[0] / 600))
    # The bar's height comes from a fixed reference string, not the title,
    # so panels with different titles stay the same height side by side.
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    bar = np.full((th + base + 10, image.shape[1], 3), 32, np.uint8)
    cv2.putText(bar, title, (6, th + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


class OverlayWriter:
    """Write RGB frames to a video file, opened on the first frame at its size.

    mp4 with the ``mp4v`` codec by default (plays in browsers/VLC); if this
    OpenCV build cannot write that, falls back to MJPG in an .avi next to the
    requested path and says so.  Odd sizes are padded by one black pixel
    because the encoders need even dimensions.
    """

    def __init__(self, path: Union[str, Path], fps: float = 25.0, *, fourcc: str = "mp4v") -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if len(fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
        self.requested_path = Path(path)
        self.path = self.requested_path
        self.fps = float(fps)
        self.fourcc = fourcc
        self.size: Optional[tuple[int, int]] = None  # (width, height) as written
        self.frames_written = 0
        self._first: Optional[tuple[int, int]] = None  # (width, height) of the first frame
        self._writer: Optional[cv2.VideoWriter] = None
        self._closed = False

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = (width + width % 2, height + height % 2)
        attempts = [(self.fourcc, self.requested_path)]
        if self.fourcc.upper() != "MJPG":
            attempts.append(("MJPG", self.requested_path.with_suffix(".avi")))
        for fourcc, path in attempts:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), self.fps, size)
            if writer.isOpened():
                if path != self.requested_path or fourcc != self.fourcc:
                    log.warning("cannot write %s with %s here; writing %s with %s instead",
                                self.requested_path, self.fourcc, path, fourcc)
                self._writer, self.path, self.fourcc, self.size = writer, path, fourcc, size
                return
            writer.release()
        raise OSError(
            f"OpenCV cannot write video {self.requested_path} ({self.fourcc}, nor MJPG .avi); check that the "
            "folder is writable and that opencv-python(-headless) is installed with its FFmpeg backend"
        )

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one RGB frame; every frame must have the first frame's size."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        frame = _check_image(frame_rgb, "frame")
        h, w = frame.shape[:2]
        if self._writer is None:
            self._open(w, h)
            self._first = (w, h)
        if (w, h) != self._first:
            raise ValueError(
                f"{self.path}: frame size {w}x{h} differs from the first frame's {self._first[0]}x{self._first[1]}; "
                "a video has one size -- resize frames before writing"
            )
        assert self._writer is not None and self.size is not None
        if (w, h) != self.size:
            frame = cv2.copyMakeBorder(frame, 0, self.size[1] - h, 0, self.size[0] - w, cv2.BORDER_CONSTANT, value=0)
        self._writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (an mp4 is unreadable until this runs)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            log.info("wrote %d frames to %s", self.frames_written, self.path)
        self._closed = True

    def __enter__(self) -> "OverlayWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
