"""Image dimensions from the PNG or JPEG header, read before anything is decoded.

Pillow's format plugins parse only the header when an image is opened; building the
plugin's image object directly skips Pillow's own decompression-bomb check, so an
image of any declared size can be measured (and refused by our limit, with its size).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Protocol

from PIL import JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from core.errors import Malformed, TooLarge

_PLUGINS = {"PNG": PngImagePlugin.PngImageFile, "JPEG": JpegImagePlugin.JpegImageFile}


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, image_format: str, filename: str) -> ImageHeader:
    """The format, size and frame count an image declares.

    Raises:
        Malformed: the header cannot be parsed or declares an empty image.
    """
    try:
        with _PLUGINS[image_format](io.BytesIO(data)) as image:
            width, height = image.size
            frames = int(getattr(image, "n_frames", 1) or 1)
    except (
        UnidentifiedImageError,
        SyntaxError,
        OSError,
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        struct.error,
    ) as exc:  # Pillow's plugins raise all of these
        reason = str(exc) or exc.__class__.__name__
        raise Malformed(
            f"{filename} has an unreadable {image_format} header: {reason}", filename=filename
        ) from None
    if width < 1 or height < 1:
        raise Malformed(f"{filename} declares an empty image ({width}×{height})", filename=filename)
    return ImageHeader(image_format, width, height, frames)


class Measured(Protocol):
    """What a header declares about its size (a PNG's or JPEG's, or a DICOM frame's)."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def pixels(self) -> int: ...


def check_pixels(header: Measured, max_pixels: int, filename: str) -> None:
    """Refuse (TooLarge) an image of more than ``max_pixels`` pixels, naming it and its size."""
    if header.pixels > max_pixels:
        raise TooLarge(
            f"{filename} is {header.width}×{header.height} pixels "
            f"({header.pixels} pixels), above the limit of {max_pixels} "
            "(MAX_SCAN_PIXELS)",
            filename=filename,
            width=header.width,
            height=header.height,
        )
