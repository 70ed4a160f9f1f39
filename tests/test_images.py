"""Image, 16-bit depth and PFM readers: conversions, orientation, and every failure mode."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sddr_pipeline.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    image_size,
    read_depth_png16,
    read_gray8,
    read_image,
    read_pfm,
    write_pfm,
)


def _rgb(h: int = 4, w: int = 5) -> np.ndarray:
    return (np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3) * 7 % 256).astype(np.uint8)


def _png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG claiming ``width`` x ``height`` (8-bit RGB) with a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_rgb_round_trip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, arr)


def test_grayscale_and_bilevel_become_three_equal_channels(tmp_path):
    gray = _rgb()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    Image.fromarray(gray > 100).save(tmp_path / "b.png")
    bilevel = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(bilevel[..., 1], np.where(gray > 100, 255, 0))


def test_sixteen_bit_grayscale_is_divided_by_257(tmp_path):
    values = np.array([[0, 257, 25700], [65535, 128, 384]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], np.rint(values / 257.0).astype(np.uint8))
    assert out[1, 0, 0] == 255 and out[0, 1, 0] == 1 and out[0, 2, 0] == 100


def test_alpha_is_dropped_not_composited(tmp_path):
    arr = _rgb()
    alpha = np.zeros((4, 5), np.uint8)
    alpha[0] = 255
    Image.fromarray(np.dstack([arr, alpha])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), arr)
    Image.fromarray(np.dstack([arr[..., 0], alpha]), mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out[..., 2], arr[..., 0])


def test_palette_images_use_their_colours(tmp_path):
    img = Image.new("P", (3, 2))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putdata([0, 1, 0, 1, 1, 0])
    img.info["transparency"] = 1
    img.save(tmp_path / "p.png", transparency=1)
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 50])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:5, :10] = 255  # a bright block at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / f"o{suffix}", exif=exif, quality=100)
    out = read_image(tmp_path / f"o{suffix}")
    assert out.shape == (30, 20, 3)
    assert image_size(tmp_path / f"o{suffix}") == (30, 20)
    expected = np.rot90(arr, -1)
    assert np.abs(out.astype(int) - expected).mean() < 4
    assert out[:10, -5:].mean() > 200 and out[-10:, :5].mean() < 50


def test_error_is_a_value_error_naming_file_and_reason(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert isinstance(info.value, ValueError)
    assert info.value.path == path and "does not exist" in info.value.reason
    assert "missing.png" in str(info.value) and "does not exist" in str(info.value)


def test_error_message_keeps_a_uri_as_given():
    # pipeline inputs are URIs: the message must name s3://bucket/..., not s3:/bucket/...
    err = ImageReadError("s3://bucket/images/broken.jpg", "unreadable image header")
    assert str(err) == "cannot read s3://bucket/images/broken.jpg: unreadable image header"


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_directory_and_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)
    (tmp_path / "notes.png").write_text("this is text, not pixels")
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_image(tmp_path / "notes.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_are_rejected(tmp_path, suffix):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(tmp_path / f"cut{suffix}")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path):
    Image.fromarray(_rgb(32, 32)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 24] = b"\xff" * 16
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(tmp_path / "bad.png")


def test_size_is_checked_from_the_header_before_decoding(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match=r"5x4 = 20 pixels, more than max_pixels=10"):
        read_image(tmp_path / "small.png", max_pixels=10)
    # 12000 x 12000 header with 64 bytes of pixel data: only a header check reports the size.
    header_only = _png_with_header(tmp_path / "big.png", 12000, 12000)
    with pytest.raises(ImageReadError, match="more than max_pixels=100000000"):
        read_image(header_only, max_pixels=100_000_000)
    # Beyond PIL's own decompression-bomb guard: still an ImageReadError.
    with pytest.raises(ImageReadError, match="absurdly large"):
        read_image(_png_with_header(tmp_path / "huge.png", 100_000, 100_000))


def test_zero_size_header(tmp_path):
    with pytest.raises(ImageReadError, match="zero.png"):
        read_image(_png_with_header(tmp_path / "zero.png", 0, 10))


def test_unsupported_mode(tmp_path):
    Image.fromarray(np.ones((3, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="unsupported pixel mode 'F'"):
        read_image(tmp_path / "f.tif")


def test_image_extensions_are_lower_case_suffixes():
    assert {".png", ".jpg", ".jpeg"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


def test_depth_png16_is_raw_and_rejects_8_bit(tmp_path):
    depth = np.array([[0, 1, 65535], [256, 1000, 4242]], dtype=np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    out = read_depth_png16(tmp_path / "d.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, depth)
    Image.fromarray(depth.astype(np.uint8)).save(tmp_path / "d8.png")
    with pytest.raises(ImageReadError, match="16-bit"):
        read_depth_png16(tmp_path / "d8.png")
    with pytest.raises(ImageReadError, match="8-bit"):
        read_gray8(tmp_path / "d.png")


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_round_trip_both_byte_orders(tmp_path, little_endian):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4) - 2.5
    arr[1, 2] = np.inf
    write_pfm(tmp_path / "a.pfm", arr, little_endian=little_endian)
    head = (tmp_path / "a.pfm").read_bytes()[:16]
    assert head.startswith(b"Pf\n4 3\n" + (b"-1.0" if little_endian else b"1.0"))
    out = read_pfm(tmp_path / "a.pfm")
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, arr)


def test_pfm_rows_are_stored_bottom_to_top_and_scale_magnitude_ignored(tmp_path):
    bottom, top = [1.0, 2.0], [3.0, 4.0]
    body = np.array(bottom + top, dtype=">f4").tobytes()
    (tmp_path / "m.pfm").write_bytes(b"Pf\n2 2\n0.003922\n" + body)
    np.testing.assert_array_equal(read_pfm(tmp_path / "m.pfm"), [top, bottom])


def test_pfm_colour_and_errors(tmp_path):
    arr = np.random.default_rng(1).normal(size=(2, 3, 3)).astype(np.float32)
    write_pfm(tmp_path / "c.pfm", arr)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), arr)
    data = (tmp_path / "c.pfm").read_bytes()
    (tmp_path / "cut.pfm").write_bytes(data[:-5])
    with pytest.raises(ImageReadError, match="truncated PFM"):
        read_pfm(tmp_path / "cut.pfm")
    (tmp_path / "bad.pfm").write_bytes(b"P6\n2 2\n255\n" + b"\0" * 12)
    with pytest.raises(ImageReadError, match="not a PFM"):
        read_pfm(tmp_path / "bad.pfm")
    with pytest.raises(ImageReadError, match="does not exist"):
        read_pfm(tmp_path / "none.pfm")
