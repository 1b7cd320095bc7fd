"""Reading input images: every failure names the file, and 16-bit greyscale images are scaled to 8 bits.

detectron2's ``read_image`` converts with Pillow's ``Image.convert("RGB")``, which *clips* a 16-bit
greyscale image (mode ``I;16``: values 0-65535) to 255, so such an image reads as all white and is
segmented with confidence; and a truncated file raises Pillow's "image file is truncated" without
its name. Here 16-bit greyscale is scaled to 0-255 (value / 257, rounded: 65535 -> 255, the inverse
of the usual 8 -> 16 bit expansion ×257). Modes ``I`` (32-bit integer) and ``F`` (float) say nothing
about the bit depth: with integer values in 0..255 they are 8-bit values as they are (scaling them
would make them almost black), with integers up to 65535 they are taken as 16-bit; other values
(negative, fractional, larger) are refused by name.
"""
import io
from typing import Optional

import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image

__all__ = ["ImageTooLargeError", "decode_image", "read_image"]


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than the caller allows."""


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_8bit(image: Image.Image, path: str) -> Image.Image:
    """An 8-bit greyscale (mode L) image of a 16-bit (or mode I / F) one; other modes unchanged."""
    if image.mode not in _SIXTEEN_BIT + ("I", "F"):
        return image
    values = np.asarray(image)
    if image.mode in ("I", "F") and (values.size == 0 or values.min() < 0 or values.max() > 65535
                                     or not np.array_equal(values, np.round(values))):
        raise ValueError(f"Image '{path}' is a {image.mode} image with values outside 16-bit integers "
                         f"({values.min()}..{values.max()}); convert it to 8-bit RGB or greyscale first.")
    scale = 257.0 if image.mode in _SIXTEEN_BIT or values.max() > 255 else 1.0
    return Image.fromarray(np.round(values.astype(np.float64) / scale).astype(np.uint8), mode="L")


def _decode(source, name: str, format: str, max_pixels: Optional[int]) -> np.ndarray:
    try:
        image = Image.open(source)
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageTooLargeError(
                f"Image '{name}' is {image.width}x{image.height} = {image.width * image.height:,} pixels, over "
                f"the limit of {max_pixels:,}; scale it down first.")
        image.load()
    except ImageTooLargeError:
        raise
    except Exception as e:  # Pillow raises several types for damaged files (OSError, SyntaxError, ...)
        raise ValueError(f"Cannot read image '{name}' ({type(e).__name__}: {e}).") from e
    image = utils._apply_exif_orientation(_to_8bit(image, name))
    return utils.convert_PIL_to_numpy(image, format)


def read_image(path: str, format: str = "RGB") -> np.ndarray:
    """H×W×3 uint8 in ``format`` ("RGB" or "BGR"), EXIF orientation applied, as detectron2's
    ``read_image``; ValueError naming the file when it cannot be read (missing, truncated, not an image)."""
    try:
        with open(path, "rb") as f:
            return _decode(f, path, format, None)
    except OSError as e:  # missing or unreadable file (decoding errors are ValueErrors already)
        raise ValueError(f"Cannot read image '{path}' ({type(e).__name__}: {e}).") from e


def decode_image(data: bytes, name: str, *, format: str = "RGB", max_pixels: int = 50_000_000) -> np.ndarray:
    """:func:`read_image` for an image held in memory (e.g. an upload), named ``name`` in errors. The
    width × height in the file's header is checked against ``max_pixels`` before any pixel is decoded
    (:class:`ImageTooLargeError`, a ValueError), so a small file that declares a huge image costs nothing."""
    return _decode(io.BytesIO(data), name, format, max_pixels)
