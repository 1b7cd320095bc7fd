#!/usr/bin/env python
"""Prepare ADE20K-full (847 classes) validation images and 16-bit labels for ldvc_d2.

The literature's ADE-full benchmark (MaskFormer's conversion, used by CLIPtrase and the other
open-vocabulary papers), rewritten here from its description:
* class mask of an ADE20K 2021 ``*_seg.png``: ``R // 10 * 256 + G``;
* images whose short side exceeds 512 are resized to short side 512, the long side
  ``round(long * 512 / short)`` (image bilinear, class mask nearest, both with OpenCV);
* the 847 listed object ids (ldvc_d2/data/datasets/ade_full_classes.py) -> labels 0..846 in list
  order, every other value (0 = unlabelled, rarer classes) -> 65535 (ignore), 16-bit PNG;
* images are written as JPEG by PIL with its default quality, as MaskFormer writes them, so that
  the evaluated pixels are the literature's (a flat folder; the release nests them by scene).

Reads (under --root):
  ADE20K_2021_17_01/images/ADE/validation/**/ADE_val_*.jpg  and the  *_seg.png  beside each
Writes:
  ADE20K_2021_17_01/images_ldvc/validation/*.jpg        2,000
  ADE20K_2021_17_01/annotations_ldvc/validation/*.png   2,000 16-bit PNGs
--center-crop N also writes crop<N>/ copies.
"""
import argparse
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from _center_crop import write_center_crops
from _prep_utils import (IGNORE16, LabelError, base_parser, check_count, load_class_module, make_lut,
                         report_unmatched, run_main, run_parallel, save_image_atomic,
                         save_png_atomic, summarize)

EXPECTED_VAL = 2000
MAX_SHORT_SIDE = 512
ADE = "ADE20K_2021_17_01"
IMAGES_OUT = os.path.join(ADE, "images_ldvc", "validation")
LABELS_OUT = os.path.join(ADE, "annotations_ldvc", "validation")
_IDS = load_class_module("ade_full_classes").ADE_FULL_IDS
# Class-mask values reach 25 * 256 + 255 (R // 10 <= 25).
ADE_FULL_LUT = make_lut(26 * 256, {i: k for k, i in enumerate(_IDS)}, default=IGNORE16)


@dataclass(frozen=True)
class AdeJob:
    """Convert ``image`` + ``seg`` (the release's files) into ``image_out`` + ``label_out``."""

    image: str
    seg: str
    image_out: str
    label_out: str


def class_mask(seg: np.ndarray, path: str) -> np.ndarray:
    """ADE20K 2021 object-class mask ``R // 10 * 256 + G`` of an RGB ``*_seg.png`` array."""
    if seg.ndim != 3 or seg.shape[2] < 2:
        raise LabelError(f"{path}: expected the RGB(A) *_seg.png of ADE20K 2021, got shape {seg.shape}")
    return (seg[:, :, 0] // 10).astype(np.int32) * 256 + seg[:, :, 1].astype(np.int32)


def resized_hw(height: int, width: int) -> Optional[tuple]:
    """(height, width) with the short side at MAX_SHORT_SIDE when it is longer, else None."""
    if width >= height > MAX_SHORT_SIDE:
        return MAX_SHORT_SIDE, round(width / float(height) * MAX_SHORT_SIDE)
    if height >= width > MAX_SHORT_SIDE:
        return round(height / float(width) * MAX_SHORT_SIDE), MAX_SHORT_SIDE
    return None


def convert_ade_full(job: AdeJob) -> str:
    """Write the (resized) image and its 847-class label; "skipped" when both exist."""
    if os.path.exists(job.image_out) and os.path.exists(job.label_out):
        return "skipped"
    try:
        with Image.open(job.image) as im:
            image = np.asarray(im)
        with Image.open(job.seg) as im:
            mask = class_mask(np.asarray(im), job.seg)
    except (OSError, ValueError, SyntaxError) as e:
        raise LabelError(f"{job.image} / {job.seg}: cannot read ({e})") from e
    if mask.shape != image.shape[:2]:
        raise LabelError(f"{job.seg}: size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from "
                         f"image '{job.image}' ({image.shape[1]}x{image.shape[0]})")
    size = resized_hw(*mask.shape)
    if size is not None:
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)
    save_image_atomic(Image.fromarray(image), job.image_out)
    save_png_atomic(ADE_FULL_LUT[mask].astype(np.uint16), job.label_out)
    return "written"


def build_jobs(root: str) -> List[AdeJob]:
    """One job per validation image of the release (searched recursively); a missing *_seg.png is
    an error."""
    val = os.path.join(root, ADE, "images", "ADE", "validation")
    if not os.path.isdir(val):
        raise FileNotFoundError(f"folder '{val}' not found: unpack ADE20K_2021_17_01.zip under the "
                                "datasets root, see datasets/README.md")
    images = {}
    for folder, _, files in os.walk(val):
        images.update({n[:-4]: os.path.join(folder, n) for n in files
                       if n.endswith(".jpg") and not n.startswith(".")})
    no_seg = [s + "_seg.png" for s, p in images.items() if not os.path.isfile(p[:-4] + "_seg.png")]
    report_unmatched(no_seg, f"images of '{val}' without their *_seg.png", fatal=True)
    return [AdeJob(images[s], images[s][:-4] + "_seg.png", os.path.join(root, IMAGES_OUT, s + ".jpg"),
                   os.path.join(root, LABELS_OUT, s + ".png")) for s in sorted(images)]


def prepare(args: argparse.Namespace) -> None:
    """Convert the validation split."""
    jobs = build_jobs(args.root)
    check_count(len(jobs), EXPECTED_VAL, "ADE20K-full validation")
    out_dirs = [os.path.join(args.root, IMAGES_OUT), os.path.join(args.root, LABELS_OUT)]
    counts = run_parallel(convert_ade_full, jobs, args.workers, "ADE20K-full validation", out_dirs)
    summarize("validation", counts, os.path.join(args.root, LABELS_OUT))
    write_center_crops(args.root, [(IMAGES_OUT, LABELS_OUT)], args.center_crop, args.workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
