"""CLIPtrase's centre-crop evaluation protocol, written as image + label copies (``--center-crop N``).

The official script (``clip_self_correlation.py:38-56``) evaluates every benchmark on the central
square of each image: torchvision's ``Resize(N)`` (short side to N, long side ``int(N * long /
short)``; bicubic for the image, nearest for the ground truth) then ``CenterCrop(N)`` (offsets
``int(round((size - N) / 2))``, Python's round half to even), on PIL images, then RGB conversion.
Doing this once at preparation time lets any model evaluate the ``<name>_crop<N>`` sets whole at
N x N. Copies go to ``ROOT/crop<N>/<image folder>/<stem>.png`` and ``ROOT/crop<N>/<label folder>/
<stem>.png``: the folders mirror the originals, images are lossless PNGs (no second JPEG loss), and
labels keep their bit depth. Finished pairs are skipped; files are written atomically.
"""
import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

from _prep_utils import (LabelError, list_stems, read_index_png, report_unmatched, run_parallel,
                         save_image_atomic, save_png_atomic)

__all__ = ["CropJob", "center_crop_image", "center_crop_label", "crop_box", "crop_jobs",
           "resized_size", "write_center_crops"]


@dataclass(frozen=True)
class CropJob:
    """Centre-crop ``image`` and ``label`` (same size) to ``size`` x ``size``."""

    image: str
    label: str
    image_out: str
    label_out: str
    size: int


def resized_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """(height, width) after torchvision's ``Resize(size)``: short side ``size``, long side
    ``int(size * long / short)`` (truncated)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop_box(height: int, width: int, size: int) -> Tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop(size)`` on a ``height`` x ``width`` image."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _resize_and_crop(image: Image.Image, size: int, resample: int) -> Image.Image:
    height, width = resized_size(image.height, image.width, size)
    image = image.resize((width, height), resample)
    top, left = crop_box(height, width, size)
    return image.crop((left, top, left + size, top + size))


def center_crop_image(image: Image.Image, size: int) -> Image.Image:
    """Bicubic ``Resize(size)`` + ``CenterCrop(size)`` in the image's own mode, then RGB."""
    return _resize_and_crop(image, size, Image.BICUBIC).convert("RGB")


def center_crop_label(label: np.ndarray, size: int) -> np.ndarray:
    """Nearest ``Resize(size)`` + ``CenterCrop(size)`` of an (H, W) uint8 or uint16 label, resized as
    the PIL image of that dtype ("L" / "I;16", whose nearest sampling differs slightly from "I"),
    as the official script resizes the ground truth it opens; keeps the dtype."""
    label = np.asarray(label)
    if label.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"labels are uint8 or uint16 arrays, got {label.dtype}")
    return np.asarray(_resize_and_crop(Image.fromarray(label), size, Image.NEAREST))


def _read_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, SyntaxError) as e:
        raise LabelError(f"{path}: cannot read image ({e})") from e


def _crop_one(job: CropJob) -> str:
    if os.path.exists(job.image_out) and os.path.exists(job.label_out):
        return "skipped"
    label = read_index_png(job.label)
    if label.dtype not in (np.uint8, np.uint16):  # older Pillow opens 16-bit PNGs as 32-bit "I"
        label = label.astype(np.uint16)
    image = _read_image(job.image)
    if image.size != label.shape[::-1]:
        raise LabelError(f"{job.label}: label size {label.shape[1]}x{label.shape[0]} (WxH) "
                         f"differs from image '{job.image}' ({image.width}x{image.height})")
    if not os.path.exists(job.image_out):
        save_image_atomic(center_crop_image(image, job.size), job.image_out)
    save_png_atomic(center_crop_label(label, job.size), job.label_out)
    return "written"


def crop_jobs(root: str, image_dir: str, label_dir: str, size: int,
              image_ext: str = ".jpg") -> List[CropJob]:
    """One job per prepared label of ``root/label_dir`` (folders relative to ``root``); a label
    without its image in ``root/image_dir`` is an error."""
    if size <= 0:
        raise ValueError(f"--center-crop {size}: the crop size must be a positive number of pixels")
    labels = list_stems(os.path.join(root, label_dir), ".png")
    images = list_stems(os.path.join(root, image_dir), image_ext)
    report_unmatched([s + ".png" for s in labels if s not in images],
                     f"labels of '{label_dir}' without an image in '{image_dir}'", fatal=True)
    out_images = os.path.join(root, f"crop{size}", image_dir)
    out_labels = os.path.join(root, f"crop{size}", label_dir)
    return [CropJob(images[s], labels[s], os.path.join(out_images, s + ".png"),
                    os.path.join(out_labels, s + ".png"), size) for s in sorted(labels)]


def write_center_crops(root: str, sets: Sequence[Tuple[str, str]], sizes: Sequence[int],
                       workers: int, image_ext: str = ".jpg") -> None:
    """Write the ``crop<N>`` copies of every (image folder, label folder) pair for every N."""
    for size in sizes:
        for image_dir, label_dir in sets:
            jobs = crop_jobs(root, image_dir, label_dir, size, image_ext)
            out_dirs = {os.path.dirname(p) for j in jobs for p in (j.image_out, j.label_out)}
            counts = run_parallel(_crop_one, jobs, workers, f"crop{size} {label_dir}", out_dirs)
            print(f"crop{size} {label_dir}: {counts['written']} written, {counts['skipped']} "
                  f"already done -> {os.path.join(root, f'crop{size}', label_dir)}")
