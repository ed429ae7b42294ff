"""Decode any image a user may hand us into one predictable form: upright, size-checked 8-bit RGB.

Datasets collected from many clinics contain grayscale scans, palette PNGs, CMYK JPEGs from print workflows,
16-bit TIFFs and phone photos whose pixels are stored sideways with an EXIF rotation flag. Every later step
(resize, cache, transforms, ONNX serving) assumes RGB uint8, so all of that is normalised here, once.

Choices:
- Transparent pixels (RGBA, LA, palette with a transparent entry) are composited on **white**, not dropped:
  the RGB values under fully transparent pixels are arbitrary (often black), and white is what a viewer shows.
- 16-bit integer images are scaled with the fixed factor 255/65535 (not clipped, not stretched per image), so
  a pixel keeps the same brightness whatever else is in the picture. 32-bit float images have no fixed range
  and are stretched linearly from their own minimum and maximum.
- Pixels are counted from the header *before* decoding, against a limit of our own (`max_pixels`, default 50
  megapixels, `$LESIONLAB_MAX_PIXELS` to change it), so a decompression bomb is refused cheaply. Pillow's own,
  higher limit (its `DecompressionBombError`) is reported the same way; its warning is silenced because ours
  applies first.
- The whole image is decoded (`load()`), so a truncated file fails here and not in the middle of training.
- With `min_size` (the service passes four times the model's input size), an image larger than needed is
  decoded reduced, so its memory follows what the model sees, not the upload's pixels: a JPEG decodes at
  1/2, 1/4 or 1/8 scale in the decoder itself (`draft`); other formats cannot decode partly, so they decode
  once and are reduced by an integer factor (`Image.reduce`) before any conversion or copy. Both sides stay
  at least `min_size`, and an image whose short side is under twice `min_size` decodes exactly as without
  it. Training never reduces.

MedMNIST images live inside an `.npz` archive; their path is `file.npz#<part>/<index>` and decoding reads the
part's array once per process.
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from lesionlab.errors import ConfigError, ImageDecodeError

DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "LESIONLAB_MAX_PIXELS"
WHITE = (255, 255, 255, 255)
SIXTEEN_BIT_MAX = 65535
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_NPZ_MEMBER = re.compile(r"^(?P<archive>.+\.npz)#(?P<part>[A-Za-z]+)/(?P<index>\d+)$", re.IGNORECASE)
_UNREDUCIBLE_MODES = frozenset({"1", "P", "I;16", "I;16L", "I;16B", "I;16N"})
_PIL_FAILURES = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError)
EMPTY_FILE_REASON = "empty file (0 bytes); re-copy or re-export the image, or remove it"

T = TypeVar("T")
R = TypeVar("R")

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def pixel_limit() -> int:
    """The largest image (width x height) lesionlab decodes: `$LESIONLAB_MAX_PIXELS`, else 50 megapixels."""
    configured = os.environ.get(MAX_PIXELS_ENV)
    if configured is None:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(configured)
    except ValueError:
        raise ConfigError(
            f"{MAX_PIXELS_ENV}={configured!r} is not a whole number of pixels; "
            f"set it like {MAX_PIXELS_ENV}=80000000 or unset it"
        ) from None
    if limit <= 0:
        raise ConfigError(f"{MAX_PIXELS_ENV}={configured!r} must be positive")
    return limit


def npz_member_path(archive: str | os.PathLike[str], part: str, index: int) -> str:
    """The path string that names one image inside a MedMNIST archive, e.g. `dermamnist.npz#train/12`."""
    return f"{os.fspath(archive)}#{part}/{index}"


def parse_npz_member(path: str) -> tuple[str, str, int] | None:
    """Split `file.npz#part/index` into its pieces, or return None for an ordinary file path."""
    match = _NPZ_MEMBER.match(path)
    if match is None:
        return None
    return match["archive"], match["part"], int(match["index"])


@functools.lru_cache(maxsize=4)
def npz_part_images(archive: str, part: str) -> np.ndarray:
    """Read one part's image array from a MedMNIST archive, once per process.

    The arrays are read whole (an `.npz` is a zip, so it cannot be memory-mapped); holding the decoded array
    rather than the open archive keeps forked DataLoader workers from sharing a file offset.
    """
    key = f"{part}_images"
    try:
        with np.load(archive) as archive_arrays:
            return archive_arrays[key]
    except KeyError:
        raise ImageDecodeError(archive, f"the archive has no array '{key}'") from None
    except (OSError, ValueError) as error:
        raise ImageDecodeError(archive, f"cannot read the archive ({error})") from None


def _load_npz_member(path: str, archive: str, part: str, index: int) -> Image.Image:
    """Turn one MedMNIST array row (grayscale HxW or colour HxWx3) into an RGB image."""
    images = npz_part_images(archive, part)
    if index >= len(images):
        raise ImageDecodeError(
            path, f"index {index} is past the end of '{part}_images' ({len(images)} images)"
        )
    pixels = images[index]
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")


def _high_depth_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map a 16-bit or float image to 0..255 without clipping its bright end (see the module docstring)."""
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(pixels.dtype, np.integer) and low >= 0 and high <= SIXTEEN_BIT_MAX:
        scaled = values * (255.0 / SIXTEEN_BIT_MAX)
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB, compositing transparency on white."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image))).convert("RGB")
    if _has_transparency(image):
        with_alpha = image.convert("RGBA")
        background = Image.new("RGBA", with_alpha.size, WHITE)
        return Image.alpha_composite(background, with_alpha).convert("RGB")
    return image.convert("RGB")


def load_rgb(
    path: str | os.PathLike[str], max_pixels: int | None = None, min_size: int | None = None
) -> Image.Image:
    """Decode an image file (or `file.npz#part/index`) fully into upright RGB; raise ImageDecodeError.

    `max_pixels` defaults to `pixel_limit()`; an image with more pixels is refused before it is decoded.
    With `min_size`, a larger image is decoded reduced, both sides kept at least `min_size` (see the module
    docstring).
    """
    text = os.fspath(path)
    member = parse_npz_member(text)
    if member is not None:
        return _load_npz_member(text, *member)
    if not Path(text).is_file():
        raise ImageDecodeError(text, "file not found (or not a regular file)")
    if os.path.getsize(text) == 0:
        raise ImageDecodeError(text, EMPTY_FILE_REASON)
    return _decode(text, text, max_pixels, min_size)


def decode_bytes(
    data: bytes, name: str, max_pixels: int | None = None, min_size: int | None = None
) -> Image.Image:
    """`load_rgb` for an image held in memory (an upload); errors name it `name`."""
    if not data:
        raise ImageDecodeError(name, EMPTY_FILE_REASON)
    return _decode(io.BytesIO(data), name, max_pixels, min_size)


def _decode(source: str | BinaryIO, name: str, max_pixels: int | None, min_size: int | None) -> Image.Image:
    try:
        with Image.open(source) as image:
            check_pixel_count(name, *image.size, max_pixels)
            if min_size is not None:
                image.draft(None, (min_size, min_size))
            image.load()
            reduced = image if min_size is None else _reduced(image, min_size)
            upright = ImageOps.exif_transpose(reduced)
            return to_rgb(upright)
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(
            name,
            f"refused by Pillow as a possible decompression bomb ({error}); "
            "downscale the image before using it",
        ) from None
    except _PIL_FAILURES as error:
        raise ImageDecodeError(
            name, f"cannot decode image ({type(error).__name__}: {error}); re-export or remove the file"
        ) from None


def check_pixel_count(name: str, width: int, height: int, max_pixels: int | None = None) -> None:
    """Raise ImageDecodeError when a `width` x `height` image passes `max_pixels` (default `pixel_limit()`).

    Public so a caller that reads the header itself (the service sorts uploads by it) refuses by the same
    rule and words as the decoder.
    """
    limit = pixel_limit() if max_pixels is None else max_pixels
    if width * height > limit:
        raise ImageDecodeError(name, _too_large_reason(width, height, limit))


def _reduced(image: Image.Image, min_size: int) -> Image.Image:
    """The decoded image shrunk by the largest integer factor that keeps both sides at least `min_size`.

    Modes `Image.reduce` cannot handle (palette, 1-bit, 16-bit) are converted to RGB first; the EXIF block
    is carried over so the orientation still applies.
    """
    factor = min(image.size) // min_size
    if factor < 2:
        return image
    exif = image.info.get("exif")
    source = image if image.mode not in _UNREDUCIBLE_MODES else to_rgb(image)
    reduced = source.reduce(factor)
    if exif is not None:
        reduced.info["exif"] = exif
    return reduced


def _too_large_reason(width: int, height: int, limit: int) -> str:
    return (
        f"{width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the limit of {limit / 1e6:g} "
        f"megapixels; downscale the image or raise the limit with {MAX_PIXELS_ENV}"
    )


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Width and height from the header alone (no decode), for a quick survey of a dataset."""
    text = os.fspath(path)
    member = parse_npz_member(text)
    if member is not None:
        archive, part, _ = member
        height, width = npz_part_images(archive, part).shape[1:3]
        return int(width), int(height)
    try:
        with Image.open(text) as image:
            return image.size
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(
            text, f"refused by Pillow as a possible decompression bomb ({error})"
        ) from None
    except _PIL_FAILURES as error:
        raise ImageDecodeError(text, f"cannot read image header ({type(error).__name__}: {error})") from None


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """Squash an image to `size x size` with bilinear filtering.

    Pillow's bilinear resize widens its filter when shrinking (antialiasing), which is exactly what
    torchvision's `Resize((size, size))` does on PIL images in the reference; the cache and on-the-fly loading
    both call this one function, so their pixels are identical.
    """
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


def load_resized_array(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode, make RGB and squash to `size x size`; return a uint8 array of shape (size, size, 3)."""
    return np.array(resize_square(load_rgb(path), size), dtype=np.uint8)


def map_images(
    function: Callable[[T], R], items: Sequence[T], workers: int, description: str, progress: bool = True
) -> Iterator[R]:
    """Apply an image-decoding function to many items in order, with a tqdm bar.

    Threads, not processes: Pillow releases the GIL while decoding and resizing, so two threads keep two cores
    busy without pickling arrays between processes. `workers=0` runs in the calling thread.
    """
    with tqdm(total=len(items), desc=description, unit="img", disable=not progress) as bar:
        if workers <= 0:
            for item in items:
                yield function(item)
                bar.update()
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(function, items):
                yield result
                bar.update()
