"""Turning an uploaded file into an image, or into a clear 4xx reason why not.

The type is decided by the bytes, not by the file name or the client's Content-Type: Pillow identifies the
format from the file's signature, restricted to the formats we accept. Decoding then goes through
`imageio.decode_bytes`, the decoder the CLI and training use (EXIF orientation, pixel limit, full decode so
truncated files fail here), straight from memory, and reduced to `min_size` a side when given, so a huge
upload costs memory in proportion to the model's input rather than to its own pixels.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from lesionlab.data.imageio import decode_bytes
from lesionlab.errors import ImageDecodeError

ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
}


class UploadRejectedError(Exception):
    """An upload the service will not classify; `status_code` is the HTTP status to answer with."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def sniff_format(data: bytes) -> str | None:
    """The accepted image format the bytes start with (e.g. `JPEG`), or None if they are none of them."""
    try:
        with Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS)) as image:
            return image.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None


def decode_upload(data: bytes, filename: str, max_bytes: int, min_size: int | None = None) -> Image.Image:
    """Check size and type of an uploaded file and decode it to RGB; raise `UploadRejectedError` otherwise.

    `min_size`: decode a larger image reduced, both sides kept at least this many pixels.
    """
    if not data:
        raise UploadRejectedError(400, f"{filename}: the uploaded file is empty; choose an image file.")
    if len(data) > max_bytes:
        raise UploadRejectedError(413, f"{filename}: {len(data) / 1e6:.1f} MB is larger than the "
                                       f"{max_bytes / 1e6:g} MB upload limit; send a smaller image.")
    image_format = sniff_format(data)
    if image_format is None:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS.values()))
        raise UploadRejectedError(415, f"{filename}: the content is not a supported image ({accepted}).")
    try:
        return decode_bytes(data, filename, min_size=min_size)
    except ImageDecodeError as error:
        raise UploadRejectedError(422, f"{filename}: {image_format} image cannot be decoded "
                                       f"({error.reason}).") from None
