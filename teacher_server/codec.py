"""Frames in, label maps out: the byte formats on the wire, checked before any work.

A bad frame must be refused with a message the camera's operator can act on,
before it costs model time or memory: corrupt or truncated files, empty
frames, raw buffers that do not match their declared shape, and images whose
header claims more pixels than the server accepts. What the image libraries
print about a bad frame is kept off stderr and logged at a bounded rate.
"""
from __future__ import annotations

import logging
import struct
from typing import Optional

import cv2
import numpy as np

from core.codec_messages import RateLimitedWarning, quiet_decode

log = logging.getLogger(__name__)

#: Refuse frames with more pixels than this: DCI 4K (4096x2160, 8.8 Mpx, 26.5 MB decoded). The
#: header is checked before decoding, so a small file that claims a huge image costs nothing.
DEFAULT_MAX_PIXELS = 4096 * 2160

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
#: libjpeg/libpng print a line per bad frame to stderr; they are captured and logged at most this often.
_DECODER_WARNINGS = RateLimitedWarning(log, interval_s=10.0)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class FrameError(ValueError):
    """The frame cannot be used; the message says what is wrong with it."""


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the first SOF marker, without decoding."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise FrameError("corrupt JPEG: bad marker structure")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width
        if length < 2:
            raise FrameError("corrupt JPEG: bad segment length")
        pos += 2 + length
    raise FrameError("corrupt JPEG: no frame header (SOF) found")


def _jpeg_truncated(data: bytes) -> bool:
    """No end-of-image marker after the first scan starts: the file was cut short.

    The segments before the scan are skipped by their lengths (an EXIF
    thumbnail inside one has markers of its own), and scan data cannot contain
    FF D9 (0xFF is byte-stuffed), so any FF D9 after the scan's start is its
    end; bytes after it (trailers some cameras append) are allowed.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False  # not a structure this check understands; the decoder decides
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:
            return data.find(b"\xff\xd9", pos + 2) < 0
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    return True


def encoded_size(data: bytes) -> tuple[int, int]:
    """(height, width) a JPEG or PNG declares in its header."""
    if data.startswith(_PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise FrameError("corrupt PNG: missing IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data.startswith(_JPEG_MAGIC):
        return _jpeg_size(data)
    raise FrameError("frame is neither JPEG nor PNG; send JPEG/PNG bytes or a raw RGB buffer with its shape")


def decode_encoded(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3)."""
    if not data:
        raise FrameError("empty frame: no image bytes were sent")
    height, width = encoded_size(data)
    check_size(height, width, max_pixels)
    if data.startswith(_JPEG_MAGIC) and _jpeg_truncated(data):
        raise FrameError("truncated JPEG: the end-of-image marker is missing; resend the whole file")
    kind = "PNG" if data.startswith(_PNG_MAGIC) else "JPEG"
    image, complaints = quiet_decode(cv2.imdecode, np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if complaints:
        _DECODER_WARNINGS.warn(f"the {kind} decoder complained about a frame: {complaints[0]}")
    if image is None:
        raise FrameError(f"corrupt {kind}: it could not be decoded")
    if image.shape[:2] != (height, width):
        raise FrameError(f"corrupt image: header says {height}x{width}, decoded {image.shape[0]}x{image.shape[1]}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_raw(data: bytes, height: int, width: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A raw RGB uint8 buffer and its declared shape -> (H, W, 3), copied so it is writable."""
    if height == 0 or width == 0 or not data:
        raise FrameError(f"empty frame: raw image is {height}x{width} with {len(data)} bytes")
    if channels != 3:
        raise FrameError(f"raw frames must be RGB with channels=3, got channels={channels}")
    check_size(height, width, max_pixels)
    expected = height * width * channels
    if len(data) != expected:
        raise FrameError(
            f"raw frame has {len(data)} bytes but {height}x{width}x{channels} uint8 needs {expected}"
        )
    return np.frombuffer(data, np.uint8).reshape(height, width, channels).copy()


def check_size(height: int, width: int, max_pixels: Optional[int]) -> None:
    """Refuse an empty frame or one over the pixel limit, saying the limit."""
    if height == 0 or width == 0:
        raise FrameError(f"empty frame: image is {height}x{width}")
    if max_pixels is not None and height * width > max_pixels:
        raise FrameError(
            f"frame is {height}x{width} = {height * width} pixels; this server accepts at most {max_pixels} "
            "(its --max-pixels); scale the frame down before sending (TeacherClient max_side)"
        )


def encode_label_map(label_map: np.ndarray) -> bytes:
    """uint8 (H, W) -> single-channel 8-bit PNG (fast, lossless)."""
    if label_map.dtype != np.uint8 or label_map.ndim != 2:
        raise ValueError(f"label map must be uint8 (H, W), got {label_map.dtype} {label_map.shape}")
    ok, buf = cv2.imencode(".png", label_map, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding of the label map failed")
    return buf.tobytes()


def decode_label_map(data: bytes) -> np.ndarray:
    """The inverse of encode_label_map."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("label map is not a single-channel 8-bit PNG")
    return image
