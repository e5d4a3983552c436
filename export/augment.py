"""The paper's training augmentation, in one place: flip, scale with a crop or shift, small rotation, blur, noise.

Mullapudi et al.'s supplement trains JITNet with random flips, scaling and
cropping, additive noise, blur and small rotations.  :class:`Augmentation`
holds the supplement's ranges (scale 0.85-1.15 with a shift of up to 10%,
rotation up to 5 degrees, Gaussian blur half the time, pixel noise), and both
users take them from here: pre-training (:func:`random_view`, a crop of the
training size) and the DAVIS protocol's updates on an annotated frame
(:func:`frame_view`, the whole frame at its own size).

Geometry is applied to image, labels and loss weights together; pixels a
transform invents (padding, the corners a rotation or shift brings in) get
weight 0, so they never train.  Noise and blur touch the image only.  Every
draw comes from the ``rng`` passed in, so a view is a pure function of
(image, rng state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of each transform; the defaults are the supplement's."""

    flip: float = 0.5  # probability of a horizontal flip
    scale_range: tuple[float, float] = (0.85, 1.15)  # pre-training: relative to the scale that just covers the view
    shift: float = 0.1  # frame_view: translation up to this fraction of each side (random_view crops instead)
    rotate_deg: float = 5.0  # uniform in +-rotate_deg; 0 = no rotation
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    noise_std: float = 6.0  # Gaussian pixel noise, sigma uniform in 0..noise_std on 0..255; 0 = none

    @classmethod
    def geometric_only(cls) -> "Augmentation":
        """Scale/crop/flip only: `jitnet pretrain --augment geometric`."""
        return cls(rotate_deg=0.0, blur_prob=0.0, noise_std=0.0)


def rotate(image: np.ndarray, labels: np.ndarray, weights: np.ndarray, degrees: float):
    """Rotate about the centre; labels nearest, and weight 0 where the rotation brings in no pixel."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    labels = cv2.warpAffine(labels, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weights = cv2.warpAffine(weights, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return image, labels, weights


def photometric(image: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Blur (with ``blur_prob``), then additive Gaussian noise (the image only)."""
    if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(*aug.blur_sigma)))
    if aug.noise_std > 0:
        noise = rng.normal(0.0, rng.uniform(0.0, aug.noise_std), image.shape)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return image


def frame_view(image: np.ndarray, labels: np.ndarray, weights: np.ndarray, rng: np.random.Generator,
               aug: Augmentation = Augmentation()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An augmented copy of a whole frame at its own size: one affine warp (scale, shift, rotation, flip),
    then blur and noise.  What the DAVIS protocol trains on between its plain updates of an annotated frame.

    Pixels shifted in from outside the frame get label 0 and weight 0: the student never learns the border.
    """
    h, w = labels.shape
    s = rng.uniform(*aug.scale_range)
    tx, ty = rng.uniform(-aug.shift, aug.shift) * w, rng.uniform(-aug.shift, aug.shift) * h
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-aug.rotate_deg, aug.rotate_deg), s)
    m[:, 2] += (tx, ty)
    if rng.random() < aug.flip:  # x -> w - 1 - x on pixel centres: an exact mirror
        m[0, :] *= -1
        m[0, 2] += w - 1
    image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    labels = cv2.warpAffine(labels, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    weights = cv2.warpAffine(weights, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    return photometric(image, rng, aug), labels, weights


def random_view(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    aug: Augmentation = Augmentation(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented view of exactly ``size`` for pre-training: scale, rotate, crop, flip, then blur and noise.

    Where a zoomed-out view is smaller than ``size`` it is edge-padded, with
    background labels and weight 0 (as the agent pads frames).
    """
    cover = max(size[0] / image.shape[0], size[1] / image.shape[1])
    scale = cover * float(rng.uniform(*aug.scale_range))
    image, labels, weights = rescale(image, labels, weights, scale)
    if aug.rotate_deg > 0:
        image, labels, weights = rotate(image, labels, weights, float(rng.uniform(-aug.rotate_deg, aug.rotate_deg)))
    image, labels, weights = pad_to(image, labels, weights, size, rng)
    h, w = image.shape[:2]
    y0 = int(rng.integers(0, h - size[0] + 1))
    x0 = int(rng.integers(0, w - size[1] + 1))
    crop = (slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
    image, labels, weights = image[crop], labels[crop], weights[crop]
    if rng.random() < aug.flip:
        image, labels, weights = image[:, ::-1], labels[:, ::-1], weights[:, ::-1]
    image = photometric(np.ascontiguousarray(image), rng, aug)
    return tuple(np.ascontiguousarray(a) for a in (image, labels, weights))  # type: ignore[return-value]


def center_view(
    image: np.ndarray, labels: np.ndarray, weights: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic view used for held-out evaluation: scale to cover, crop the centre."""
    scale = max(size[0] / image.shape[0], size[1] / image.shape[1])
    image, labels, weights = rescale(image, labels, weights, scale)
    h, w = image.shape[:2]
    y0, x0 = (h - size[0]) // 2, (w - size[1]) // 2
    crop = (slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
    return tuple(np.ascontiguousarray(a[crop]) for a in (image, labels, weights))  # type: ignore[return-value]


def rescale(image, labels, weights, scale: float):
    h, w = image.shape[:2]
    nh, nw = max(1, int(math.ceil(h * scale - 1e-6))), max(1, int(math.ceil(w * scale - 1e-6)))
    if (nh, nw) == (h, w):
        return image, labels, weights
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return (
        cv2.resize(image, (nw, nh), interpolation=interp),
        cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST),
        cv2.resize(weights, (nw, nh), interpolation=cv2.INTER_NEAREST),
    )


def pad_to(image, labels, weights, size, rng):
    h, w = image.shape[:2]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if not ph and not pw:
        return image, labels, weights
    top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
    pads = (top, ph - top, left, pw - left)
    return (
        cv2.copyMakeBorder(image, *pads, cv2.BORDER_REPLICATE),
        cv2.copyMakeBorder(labels, *pads, cv2.BORDER_CONSTANT, value=0),
        cv2.copyMakeBorder(weights, *pads, cv2.BORDER_CONSTANT, value=0),
    )
