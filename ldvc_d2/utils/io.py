"""Files: atomic writes, and reading index-PNG labels.

Every output is written under a temporary name in its folder, then renamed: an interrupted run (Ctrl-C,
out of memory, a full disk) never leaves a half-written PNG, ``.npy`` or JSON file under the final name;
``os.replace`` is atomic within one file system. :func:`read_label` reads a label PNG (the data mappers,
DeOP's oracle proposals), 8- or 16-bit, every failure naming the file.
"""
import contextlib
import json
import os
from typing import Any, Iterator

import numpy as np
from PIL import Image

__all__ = ["atomic_path", "read_label", "write_json_atomic", "write_npy_atomic", "write_png_atomic"]


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same extension, so writers infer the format);
    rename it to ``path`` when the block succeeds, remove it when it fails."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_png_atomic(path: str, array: np.ndarray) -> None:
    """H×W (uint8 or uint16, single channel) or H×W×3 uint8 (RGB) array -> PNG."""
    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(array)  # mode I;16: a 16-bit greyscale PNG
    elif array.dtype == np.uint8 and array.ndim in (2, 3):
        image = Image.fromarray(array)
    else:
        raise ValueError(f"Cannot write a {array.dtype} array of shape {array.shape} as PNG '{path}'.")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_npy_atomic(path: str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def write_json_atomic(path: str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def read_label(path: str) -> np.ndarray:
    """Read an index PNG (mode L/P, or 16-bit I;16 / I) as an H×W array: uint8 when every value fits
    (0..255), else uint16 (the 16-bit sets with more than 255 classes, ignore 65535). A colour,
    truncated or unreadable label, or one with values outside 0..65535, is an error naming the file."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            label = np.asarray(im) if mode in ("L", "P", "I", "I;16") else None
    except (OSError, SyntaxError) as e:  # missing, truncated, not an image
        raise ValueError(f"Cannot read label '{path}' ({type(e).__name__}: {e}).") from e
    if label is None:
        raise ValueError(
            f"Label '{path}' is a {mode} image; labels must be single-channel index PNGs (class "
            "index per pixel, 255 = ignore; 16-bit PNGs for more than 255 classes). Convert it with "
            "the datasets/prepare_*.py scripts."
        )
    if label.size and (label.min() < 0 or label.max() > 65535):
        raise ValueError(f"Label '{path}' has values {label.min()}..{label.max()}; class indices must be "
                         "0..65534 (8- or 16-bit index PNG).")
    return label.astype(np.uint8 if label.max(initial=0) <= 255 else np.uint16)
