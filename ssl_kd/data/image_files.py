"""Image files decoded per sample: the header size without decoding, libjpeg-turbo decoding (OpenCV's, which gives the
same pixels as PIL's `convert("RGB")`, ~1.7x faster) at full size or 1/2, 1/4, 1/8 in the DCT domain (libjpeg's
scaled IDCT, what PIL's `draft()` does), and one clear error for a file that cannot be read.

Conventions follow torchvision's ImageFolder + PIL: RGB, EXIF orientation ignored, grayscale and CMYK JPEGs
converted to RGB, any format OpenCV reads (a PNG in a JPEG tree decodes like the others).
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np

_RGB = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
# IMREAD_REDUCED_GRAYSCALE_k is the bare "reduce by k" bit; with IMREAD_COLOR_RGB it decodes colour at 1/k
_REDUCE = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4}
_REDUCE[8] = cv2.IMREAD_REDUCED_GRAYSCALE_8
REDUCTIONS = (8, 4, 2, 1)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class UnreadableImage(Exception):
    """A file that is not a readable image (corrupt, truncated, not an image); the message names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def is_jpeg(buf: np.ndarray) -> bool:
    return len(buf) > 3 and buf[0] == 0xFF and buf[1] == 0xD8


def header_size(buf: np.ndarray, path: str) -> tuple[int, int]:
    """(H, W) from the file's header: the JPEG SOF marker, the PNG IHDR, else PIL's header reader."""
    if is_jpeg(buf):
        data = memoryview(buf)
        pos, n = 2, len(buf)
        while pos + 9 < n:
            if data[pos] != 0xFF:
                raise UnreadableImage(path, "corrupt JPEG (bad marker)")
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                pos += 2
                continue
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            if marker in _SOF:
                h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
                if h and w:
                    return int(h), int(w)
                break
            pos += 2 + length
        raise UnreadableImage(path, "corrupt or truncated JPEG (no frame header)")
    b = buf[:32].tobytes()
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
        w, h = struct.unpack(">II", b[16:24])
        return int(h), int(w)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UnreadableImage(path, f"not a readable image ({e})") from None
    return int(h), int(w)


def decode(buf: np.ndarray, path: str, reduce: int = 1) -> np.ndarray:
    """HWC uint8 RGB; a JPEG at 1/`reduce` (ceil of each side, libjpeg's scaled decoding), other formats at full
    size whatever `reduce` is (OpenCV would resize them, which is not DCT scaling)."""
    flags = _RGB | (_REDUCE[reduce] if is_jpeg(buf) else 0)
    img = cv2.imdecode(buf, flags)  # None on a corrupt or truncated file (OpenCV >= 4 turns libjpeg's warnings fatal)
    if img is None:
        raise UnreadableImage(path, "corrupt or truncated image (the decoder gave up)")
    return img


def read_file(path: str) -> np.ndarray:
    try:
        return np.fromfile(path, np.uint8)
    except OSError as e:
        raise UnreadableImage(path, f"cannot read the file ({e.strerror or e})") from None


class EncodedImage:
    """One image file, decoded on demand: `size` reads only the header; `decode(reduce)` is cached per reduction,
    so the views of one sample (weak, strong) share a decode when they use the same one."""

    __slots__ = ("path", "_buf", "_size", "_decoded")

    def __init__(self, path: str):
        self.path = path
        self._buf: np.ndarray | None = None
        self._size: tuple[int, int] | None = None
        self._decoded: dict[int, np.ndarray] = {}

    @property
    def buf(self) -> np.ndarray:
        if self._buf is None:
            self._buf = read_file(self.path)
            if len(self._buf) == 0:
                raise UnreadableImage(self.path, "empty file")
        return self._buf

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) at full resolution."""
        if self._size is None:
            self._size = header_size(self.buf, self.path)
        return self._size

    @property
    def jpeg(self) -> bool:
        return is_jpeg(self.buf)

    def decode(self, reduce: int = 1) -> np.ndarray:
        reduce = reduce if self.jpeg else 1
        if reduce not in self._decoded:
            self._decoded[reduce] = decode(self.buf, self.path, reduce)
        return self._decoded[reduce]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = self.decode(1)
        return x if dtype is None else x.astype(dtype)

    def __repr__(self) -> str:
        return f"EncodedImage({self.path!r})"


def largest_reduction(need_h: float, need_w: float, have_h: float, have_w: float) -> int:
    """The largest of 8, 4, 2, 1 that keeps a region of have_h x have_w (full-size pixels) at least need_h x need_w
    after reducing: the DCT-domain decode never makes the crop smaller than the output."""
    for r in REDUCTIONS:
        if have_h / r >= need_h and have_w / r >= need_w:
            return r
    return 1
