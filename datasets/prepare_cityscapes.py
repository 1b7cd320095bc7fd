#!/usr/bin/env python
"""Prepare Cityscapes fine labels for ldvc_d2: the 19 evaluation classes (trainIds).

Reads (under --root), from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip:
  cityscapes/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
  cityscapes/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png      labelIds 0..33
Writes (one flat folder per split; the images stay where they are):
  cityscapes/gtFine_ldvc/val/<stem>.png      500
  cityscapes/gtFine_ldvc/train/<stem>.png    2,975
Values (cityscapesScripts' labels.py): labelId 7 road -> 0, 8 sidewalk -> 1, 11 building -> 2,
12 wall -> 3, 13 fence -> 4, 17 pole -> 5, 19 traffic light -> 6, 20 traffic sign -> 7,
21 vegetation -> 8, 22 terrain -> 9, 23 sky -> 10, 24 person -> 11, 25 rider -> 12, 26 car -> 13,
27 truck -> 14, 28 bus -> 15, 31 train -> 16, 32 motorcycle -> 17, 33 bicycle -> 18; every other
labelId (0-6, 9, 10, 14-16, 18, 29, 30) -> 255 (ignored); values above 33 are an error.
"""
import argparse
import os
from typing import List, Optional, Sequence

import numpy as np

from _prep_utils import (CLASSES, IGNORE, Job, LabelError, apply_lut, base_parser, check_count, make_lut,
                         read_index_png, report_unmatched, run_jobs, run_main, summarize)

EXPECTED = {"val": 500, "train": 2975}
NUM_LABEL_IDS = 34  # labelIds 0..33 (license plate, -1, is never written into *_labelIds.png)
LABEL_SUFFIX = "_gtFine_labelIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LUT = make_lut(256, {**{i: IGNORE for i in range(NUM_LABEL_IDS)},
                                **{i: k for k, i in enumerate(CLASSES.CITYSCAPES_LABEL_IDS)}})
_HINT = "Cityscapes *_gtFine_labelIds.png hold labelIds 0..33 (not the colour or instance PNGs)."


def convert_cityscapes(job: Job) -> np.ndarray:
    """One ``*_gtFine_labelIds.png`` -> 0..18 / 255 index map."""
    return apply_lut(read_index_png(job.source), CITYSCAPES_LUT, job.source, _HINT)


def split_jobs(root: str, split: str) -> List[Job]:
    """One job per ``*_gtFine_labelIds.png`` of ``split`` (all city folders), sorted by stem; a
    label without its image is an error, an image without a label a warning."""
    labels_dir = os.path.join(root, "cityscapes", "gtFine", split)
    images_dir = os.path.join(root, "cityscapes", "leftImg8bit", split)
    for folder, archive in ((labels_dir, "gtFine_trainvaltest.zip"), (images_dir, "leftImg8bit_trainvaltest.zip")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder '{folder}' not found: unpack {archive} under "
                                    f"'{os.path.join(root, 'cityscapes')}', see datasets/README.md")
    labels, images = {}, {}
    for top, suffix, found in ((labels_dir, LABEL_SUFFIX, labels), (images_dir, IMAGE_SUFFIX, images)):
        for folder, _, files in os.walk(top):
            found.update({n[: -len(suffix)]: os.path.join(folder, n) for n in files
                          if n.endswith(suffix) and not n.startswith(".")})
    report_unmatched([s + LABEL_SUFFIX for s in labels if s not in images],
                     f"Cityscapes {split} labels without an image in '{images_dir}'", fatal=True)
    report_unmatched([s + IMAGE_SUFFIX for s in images if s not in labels],
                     f"Cityscapes {split} images without a label in '{labels_dir}'", fatal=False)
    out_dir = os.path.join(root, "cityscapes", "gtFine_ldvc", split)
    return [Job(labels[s], images[s], os.path.join(out_dir, s + ".png")) for s in sorted(labels)]


def prepare(args: argparse.Namespace) -> None:
    """Convert the requested splits."""
    if args.center_crop:
        raise LabelError("--center-crop is not offered for Cityscapes (no benchmark protocol uses it)")
    for split in args.splits:
        jobs = split_jobs(args.root, split)
        check_count(len(jobs), EXPECTED[split], f"Cityscapes {split}")
        counts = run_jobs(convert_cityscapes, jobs, args.workers, f"Cityscapes {split}")
        summarize(split, counts, os.path.join(args.root, "cityscapes", "gtFine_ldvc", split))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(EXPECTED), default=["val", "train"],
                        help="splits to convert (default: val train)")
    return run_main(prepare, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
