"""Reduced decoding for the service: big images decode small, upright and in proportion; small ones exactly;
and an empty file says so."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlab.data.imageio import decode_bytes, load_rgb
from lesionlab.errors import ImageDecodeError

MIN_SIZE = 100


def image_bytes(size: tuple[int, int], image_format: str, mode: str = "RGB", orientation: int | None = None
                ) -> bytes:
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2] = (250, 0, 0)  # top half red: shows which way up the result is
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format=image_format)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format=image_format, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize(("image_format", "mode"), [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"),
                                                    ("PNG", "P"), ("TIFF", "L")])
def test_large_images_decode_reduced_keeping_both_sides_above_minimum(image_format: str, mode: str) -> None:
    image = decode_bytes(image_bytes((2400, 1600), image_format, mode), "big", min_size=MIN_SIZE)
    assert image.mode == "RGB"
    assert MIN_SIZE <= min(image.size) < 2 * MIN_SIZE
    assert abs(image.width / image.height - 1.5) < 0.02


def test_orientation_still_applies_after_reducing() -> None:
    """EXIF orientation 6 (rotate 90 degrees clockwise to view): the landscape file becomes portrait."""
    image = decode_bytes(image_bytes((2400, 1600), "JPEG", orientation=6), "rotated", min_size=MIN_SIZE)
    assert image.height > image.width
    full = decode_bytes(image_bytes((2400, 1600), "JPEG", orientation=6), "rotated")
    assert (full.height > full.width) and full.size == (1600, 2400)


def test_images_near_the_minimum_decode_exactly_as_without_it() -> None:
    data = image_bytes((180, 150), "PNG")
    assert np.array_equal(np.asarray(decode_bytes(data, "small", min_size=MIN_SIZE)),
                          np.asarray(decode_bytes(data, "small")))


def test_an_empty_file_is_reported_as_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg: empty file"):
        load_rgb(empty)
    with pytest.raises(ImageDecodeError, match="upload: empty file"):
        decode_bytes(b"", "upload")
