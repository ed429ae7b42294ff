"""Turning an uploaded file into an image, or into a clear 4xx reason why not, in two steps.

`inspect_upload` reads only the header: it checks the size and the type, and gives the format and the pixel
count. The type is decided by the bytes, not by the file name or the client's Content-Type: Pillow
identifies the format from the file's signature, restricted to the formats we accept. Pillow opens lazily,
so the width and height are known without decoding a pixel; the service picks the upload's lane by them
(`serve.limits`), and an image over the pixel limit is refused here, before it takes a place in a lane.

`decode_upload` then decodes through `imageio.decode_bytes`, the decoder the CLI and training use (EXIF
orientation, pixel limit, full decode so truncated files fail here), straight from memory, and reduced to
`min_size` a side when given, so a huge upload costs memory in proportion to the model's input rather than to
its own pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from lesionlab.data.imageio import check_pixel_count, decode_bytes
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


@dataclass(frozen=True)
class UploadHeader:
    """What the header of an accepted upload says: its format (e.g. `PNG`) and size."""

    image_format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """Width x height: what decoding it costs, whatever its size in bytes."""
        return self.width * self.height


def read_header(data: bytes) -> UploadHeader | None:
    """The header of an image in an accepted format, or None if the bytes start with none of them.

    Pillow refuses images far over its own pixel limit already when opening them; that is reported as the
    exception it is (`Image.DecompressionBombError`), for the caller to refuse.
    """
    try:
        with Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS)) as image:
            return UploadHeader(image.format, *image.size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None


def inspect_upload(data: bytes, filename: str, max_bytes: int) -> UploadHeader:
    """Check size, type and pixel count of an uploaded file from its header; raise `UploadRejectedError`."""
    if not data:
        raise UploadRejectedError(400, f"{filename}: the uploaded file is empty; choose an image file.")
    if len(data) > max_bytes:
        raise UploadRejectedError(413, f"{filename}: {len(data) / 1e6:.1f} MB is larger than the "
                                       f"{max_bytes / 1e6:g} MB upload limit; send a smaller image.")
    try:
        header = read_header(data)
    except Image.DecompressionBombError as error:
        raise UploadRejectedError(422, f"{filename}: the image cannot be decoded ({error}); downscale it "
                                       f"before sending it.") from None
    if header is None:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS.values()))
        raise UploadRejectedError(415, f"{filename}: the content is not a supported image ({accepted}).")
    try:
        check_pixel_count(filename, header.width, header.height)
    except ImageDecodeError as error:
        raise undecodable(filename, header, error) from None
    return header


def decode_upload(data: bytes, filename: str, header: UploadHeader,
                  min_size: int | None = None) -> Image.Image:
    """Decode an upload `inspect_upload` accepted to RGB; raise `UploadRejectedError` (422) if it cannot be.

    `min_size`: decode a larger image reduced, both sides kept at least this many pixels.
    """
    try:
        return decode_bytes(data, filename, min_size=min_size)
    except ImageDecodeError as error:
        raise undecodable(filename, header, error) from None


def undecodable(filename: str, header: UploadHeader, error: ImageDecodeError) -> UploadRejectedError:
    """The 422 answer for an accepted format whose image cannot be decoded, with the decoder's reason."""
    return UploadRejectedError(422, f"{filename}: {header.image_format} image cannot be decoded "
                                    f"({error.reason}).")
