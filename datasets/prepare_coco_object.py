#!/usr/bin/env python
"""Prepare COCO-Object val labels for ldvc_d2: the 80 COCO things + background, from COCO-Stuff.

The clean conversion of CLIPtrase's COCO-Object benchmark: the thing classes keep their COCO-Stuff
indices 0..79, all 91 stuff classes become one background class (80), unlabelled (255) stays
ignored. (The official code instead scores the 171-class maps with 81 classes: stuff index 80,
'banner', and every unlabelled pixel count as background, stuff indices 81..170 are dropped; see
datasets/README.md.)

Reads (under --root), after prepare_coco_stuff.py:
  coco/val2017/*.jpg
  coco/stuffthingmaps_ldvc/val2017/*.png        171-class labels 0..170, 255 unlabelled
Writes:
  coco/coco_object_ldvc/val2017/*.png            5,000
Values: 0..79 -> 0..79, 80..170 -> 80, 255 -> 255. --center-crop N also writes crop<N>/ copies.
"""
import argparse
import os
from typing import Optional, Sequence

import numpy as np

from _center_crop import write_center_crops
from _prep_utils import (IGNORE, Job, apply_lut, base_parser, check_count, folder_jobs, make_lut,
                         read_index_png, run_jobs, run_main, summarize)

EXPECTED_VAL = 5000
NUM_THINGS = 80
SOURCE = os.path.join("coco", "stuffthingmaps_ldvc", "val2017")
OUT = os.path.join("coco", "coco_object_ldvc", "val2017")
COCO_OBJECT_LUT = make_lut(256, {IGNORE: IGNORE, **{i: min(i, NUM_THINGS) for i in range(171)}})
_HINT = "prepared COCO-Stuff labels hold 0..170 and 255; run datasets/prepare_coco_stuff.py first."


def convert_coco_object(job: Job) -> np.ndarray:
    """One prepared COCO-Stuff label -> 0..80 / 255 index map."""
    return apply_lut(read_index_png(job.source), COCO_OBJECT_LUT, job.source, _HINT)


def prepare(args: argparse.Namespace) -> None:
    """Convert the val split."""
    source = os.path.join(args.root, SOURCE)
    if not os.path.isdir(source):
        raise FileNotFoundError(f"'{source}' not found: COCO-Object is built from the prepared "
                                "COCO-Stuff labels, run `python datasets/prepare_coco_stuff.py` first")
    jobs = folder_jobs(source, os.path.join(args.root, "coco", "val2017"),
                       os.path.join(args.root, OUT), "COCO-Object val2017")
    check_count(len(jobs), EXPECTED_VAL, "COCO-Object val2017")
    counts = run_jobs(convert_coco_object, jobs, args.workers, "COCO-Object val2017")
    summarize("val2017", counts, os.path.join(args.root, OUT))
    write_center_crops(args.root, [(os.path.join("coco", "val2017"), OUT)], args.center_crop,
                       args.workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
