"""Whatever an image file holds, load_rgb returns upright 8-bit RGB or an ImageDecodeError naming the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from lesionlab.data.imageio import MAX_PIXELS_ENV, load_resized_array, load_rgb
from lesionlab.errors import ImageDecodeError

EXIF_ORIENTATION_TAG = 0x0112
ROTATED_90_CLOCKWISE = 6


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    return tuple(image.getpixel(xy))


def test_rgb_passes_through(tmp_path: Path) -> None:
    Image.new("RGB", (5, 4), (10, 20, 30)).save(tmp_path / "a.png")
    image = load_rgb(tmp_path / "a.png")
    assert (image.mode, image.size, pixel(image)) == ("RGB", (5, 4), (10, 20, 30))


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    assert pixel(load_rgb(tmp_path / "g.png")) == (77, 77, 77)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (2, 1), (200, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))
    image.save(tmp_path / "a.png")
    loaded = load_rgb(tmp_path / "a.png")
    assert (pixel(loaded, (0, 0)), pixel(loaded, (1, 0))) == ((200, 0, 0), (255, 255, 255))


def test_palette_with_transparent_entry_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png", transparency=0)
    loaded = load_rgb(tmp_path / "p.png")
    assert (pixel(loaded, (0, 0)), pixel(loaded, (1, 0))) == ((255, 255, 255), (0, 128, 0))


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    red, green, blue = pixel(load_rgb(tmp_path / "c.jpg"))
    assert red > 240 and green < 15 and blue < 15


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    loaded = load_rgb(tmp_path / "deep.png")
    assert [pixel(loaded, (x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


def test_32_bit_integer_mode_uses_the_16_bit_scale(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 32896]], dtype=np.int32))
    assert image.mode == "I"
    image.save(tmp_path / "i.tif")
    assert pixel(load_rgb(tmp_path / "i.tif"), (1, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 5, 10))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATED_90_CLOCKWISE
    image.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    upright = load_rgb(tmp_path / "phone.jpg")
    assert upright.size == (10, 30)
    assert min(pixel(upright, (5, 2))) > 200
    assert max(pixel(upright, (5, 27))) < 50


def test_truncated_jpeg_is_named(tmp_path: Path) -> None:
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        encoded, "JPEG"
    )
    (tmp_path / "cut.jpg").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg: cannot decode image .*truncated") as caught:
        load_rgb(tmp_path / "cut.jpg")
    assert caught.value.path.endswith("cut.jpg")


def test_non_image_and_missing_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg: cannot decode image"):
        load_rgb(tmp_path / "notes.jpg")
    with pytest.raises(ImageDecodeError, match=r"absent\.jpg: file not found"):
        load_rgb(tmp_path / "absent.jpg")


def test_image_over_the_pixel_limit_is_refused_with_the_limit_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (100, 50)).save(tmp_path / "big.png")
    with pytest.raises(
        ImageDecodeError, match=r"big\.png: 100x50 = 0\.0 megapixels exceeds the limit of 0\.001"
    ):
        load_rgb(tmp_path / "big.png", max_pixels=1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "4999")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        load_rgb(tmp_path / "big.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    assert load_rgb(tmp_path / "big.png").size == (100, 50)


def test_resize_squashes_like_the_reference_resize(tmp_path: Path) -> None:
    stripes = np.zeros((40, 60, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(tmp_path / "s.png")
    resized = load_resized_array(tmp_path / "s.png", 12)
    assert resized.shape == (12, 12, 3) and resized.dtype == np.uint8 and resized.flags.writeable
    assert np.abs(resized.astype(int) - 128).max() < 16, "antialiasing averages the stripes to mid-gray"
    reference = transforms.Resize((12, 12))(Image.fromarray(stripes))
    assert np.array_equal(resized, np.asarray(reference))
