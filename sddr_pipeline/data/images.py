"""Reading images, 16-bit depth PNGs and PFM files, with errors that name the file and the reason.

Every reader here either returns a well-formed array or raises :class:`ImageReadError`;
nothing is silently cropped, padded or half-decoded (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
is never touched and must stay ``False`` for truncation to be detected).
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)
"""Lower-case suffixes treated as images when scanning folders (compare case-insensitively)."""

DEFAULT_MAX_PIXELS = 200_000_000

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TO_RGB_MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr", "HSV")


class ImageReadError(ValueError):
    """An image or depth file could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        # the name as given: Path() would fold a URI's "//" ("s3://b/k" -> "s3:/b/k")
        super().__init__(f"cannot read {os.fspath(path)}: {reason}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")


def _open_decoded(path: Path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    """Open ``path`` (or ``data``, the file's bytes already in memory, which ``path`` then
    only names), check the header's size, then force a full decode of the first frame.

    The size check happens before any pixel data is decoded. PIL's own decompression-bomb
    guard (about 179 MP) still applies on top of ``max_pixels`` and is reported the same way.
    """
    if data is None:
        _check_file(path)
    elif not data:
        raise ImageReadError(path, "file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path if data is None else io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"image is absurdly large ({exc})") from exc
        except Image.UnidentifiedImageError as exc:
            raise ImageReadError(path, "not a recognised image format") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(path, f"unreadable image header ({type(exc).__name__}: {exc})") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise ImageReadError(path, f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        img.close()
        raise ImageReadError(
            path, f"image is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}"
        )
    try:
        img.load()
    except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error, ... on corrupt data
        img.close()
        raise ImageReadError(path, f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc
    return img


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    """Map the full 16-bit range onto 8 bits: ``round(value / 257)`` (65535 -> 255, 0 -> 0)."""
    return np.clip(np.rint(arr.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, *, data: bytes | None = None) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array, the way a depth model should see it.

    ``data``: the file's encoded bytes, already in memory (decoded from memory, never
    through a temporary file); ``path`` then only names the image in errors.

    - EXIF orientation is applied (``ImageOps.exif_transpose``), so the array is upright.
    - Grayscale (1, L) is replicated to 3 channels; palette images use their palette colours.
    - 16-bit grayscale is reduced with ``value / 257`` (rounded): the fixed 16-bit range, not
      a per-image min-max stretch, so brightness means the same in every file.
    - Alpha (RGBA, LA, PA, palette transparency) is DROPPED, not composited: that is what
      ``cv2.imread`` and ``PIL .convert("RGB")`` give the reference depth models, so
      predictions stay comparable with theirs. Colour under fully transparent pixels is
      whatever the file stores.
    - Multi-frame files (GIF, TIFF stacks) give their first frame.

    Raises :class:`ImageReadError` for a missing, empty, non-image, truncated or corrupt
    file, a zero-size image, one with more than ``max_pixels`` pixels (checked from the
    header before decoding) or a pixel mode with no RGB meaning (e.g. float "F").
    """
    path = Path(path)
    raw = _open_decoded(path, max_pixels, None if data is None else bytes(data))
    try:
        try:
            img = ImageOps.exif_transpose(raw)
        except Exception as exc:  # malformed EXIF blocks raise assorted errors
            raise ImageReadError(path, f"corrupt EXIF orientation data ({type(exc).__name__}: {exc})") from exc
        mode = img.mode
        if mode in _SIXTEEN_BIT_MODES or mode == "I":
            arr = np.asarray(img)
            if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
                raise ImageReadError(path, "32-bit integer image with values outside the 16-bit range")
            gray = _sixteen_to_eight(arr)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if mode not in _TO_RGB_MODES:
            raise ImageReadError(path, f"unsupported pixel mode {mode!r}")
        try:
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as exc:
            raise ImageReadError(path, f"cannot convert pixel mode {mode!r} to RGB ({exc})") from exc
    finally:
        raw.close()
    return np.ascontiguousarray(rgb)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image as displayed (EXIF rotation applied), from its header only."""
    path = Path(path)
    _check_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                width, height = img.size
                orientation = img.getexif().get(0x0112, 1)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"image is absurdly large ({exc})") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(path, f"not a readable image ({type(exc).__name__}: {exc})") from exc
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def read_depth_png16(path: str | os.PathLike, *, data: bytes | None = None) -> np.ndarray:
    """Read a single-channel 16-bit PNG (KITTI, NYU, TUM, Redwood depth) as raw HxW uint16
    (``data``: the file's bytes, already fetched; ``path`` then only names it).

    No scaling is applied: the caller knows the dataset's unit (KITTI /256, NYU /1000, ...).
    8-bit or colour files are rejected, since reading them as depth would silently be wrong.
    """
    path = Path(path)
    img = _open_decoded(path, DEFAULT_MAX_PIXELS, data)
    try:
        mode = img.mode
        if mode in _SIXTEEN_BIT_MODES:
            arr = np.asarray(img).astype(np.uint16)
        elif mode == "I":
            raw = np.asarray(img)
            if raw.min() < 0 or raw.max() > 65535:
                raise ImageReadError(path, "integer depth values outside the 16-bit range")
            arr = raw.astype(np.uint16)
        else:
            raise ImageReadError(path, f"expected a single-channel 16-bit depth image, got mode {mode!r}")
    finally:
        img.close()
    return np.ascontiguousarray(arr)


def read_gray8(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 8-bit image (Middlebury disparity PNG/PGM) as raw HxW uint8."""
    path = Path(path)
    img = _open_decoded(path, DEFAULT_MAX_PIXELS)
    try:
        if img.mode != "L":
            raise ImageReadError(path, f"expected a single-channel 8-bit image, got mode {img.mode!r}")
        arr = np.array(img, dtype=np.uint8)
    finally:
        img.close()
    return arr


_PFM_HEADER = re.compile(rb"\A(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    """Read a PFM file as float32: HxW for ``Pf`` (grayscale), HxWx3 for ``PF`` (colour).

    The sign of the header's scale gives the byte order (negative = little-endian); its
    magnitude is NOT applied (Middlebury writes 1/255 there and means raw disparities).
    PFM stores rows bottom-to-top; the result is top-to-bottom. Values (inf, NaN) are
    returned as stored.
    """
    path = Path(path)
    _check_file(path)
    data = path.read_bytes()
    match = _PFM_HEADER.match(data[:256])
    if match is None:
        raise ImageReadError(path, "not a PFM file (expected 'Pf'/'PF', width, height, scale)")
    magic, w_txt, h_txt, scale_txt = match.groups()
    width, height = int(w_txt), int(h_txt)
    try:
        scale = float(scale_txt)
    except ValueError as exc:
        raise ImageReadError(path, f"bad PFM scale {scale_txt!r}") from exc
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"PFM has zero size ({width}x{height})")
    if scale == 0:
        raise ImageReadError(path, "PFM scale is 0 (byte order undefined)")
    channels = 3 if magic == b"PF" else 1
    count = width * height * channels
    offset = match.end()
    if len(data) - offset < count * 4:
        raise ImageReadError(path, f"truncated PFM: {len(data) - offset} data bytes, need {count * 4}")
    dtype = np.dtype("<f4" if scale < 0 else ">f4")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).astype(np.float32)
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.ascontiguousarray(np.flipud(arr.reshape(shape)))


def write_pfm(path: str | os.PathLike, array: np.ndarray, little_endian: bool = True) -> None:
    """Write an HxW (``Pf``) or HxWx3 (``PF``) float array as PFM, rows bottom-to-top."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 2:
        magic = "Pf"
    elif arr.ndim == 3 and arr.shape[2] == 3:
        magic = "PF"
    else:
        raise ValueError(f"write_pfm takes an HxW or HxWx3 array, got shape {arr.shape}")
    height, width = arr.shape[:2]
    dtype = np.dtype("<f4" if little_endian else ">f4")
    header = f"{magic}\n{width} {height}\n{-1.0 if little_endian else 1.0}\n".encode("ascii")
    Path(path).write_bytes(header + np.flipud(arr).astype(dtype).tobytes())
