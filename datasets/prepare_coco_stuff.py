#!/usr/bin/env python
"""Prepare COCO-Stuff 164k labels for ldvc_d2: 171-class contiguous index PNGs.

Reads (under --root):
  coco/{train2017,val2017}/*.jpg
  coco/stuffthingmaps_trainval2017/{train2017,val2017}/*.png   ids 0..181 (0-based), 255 unlabeled
Writes:
  coco/stuffthingmaps_ldvc/{train2017,val2017}/*.png            118,287 / 5,000
Values: the 171 used ids -> 0..170 in id order (the 11 unused thing ids are removed), 255 -> 255.
An unused id in a source map is an error: it usually means 1-based (1..182) labels were given.
--center-crop N also writes crop<N>/ copies of val2017 (the coco_stuff_zs_val_crop<N> sets).
"""
import argparse
import os
from typing import Optional, Sequence

import numpy as np

from _center_crop import write_center_crops
from _prep_utils import (CLASSES, IGNORE, Job, apply_lut, base_parser, check_count, folder_jobs,
                         make_lut, read_index_png, run_jobs, run_main, summarize)

EXPECTED = {"train2017": 118287, "val2017": 5000}
UNUSED_IDS = CLASSES.COCO_STUFF_UNUSED_IDS
USED_IDS = [i for i in range(CLASSES.COCO_STUFF_NUM_IDS) if i not in UNUSED_IDS]
COCO_LUT = make_lut(256, {IGNORE: IGNORE, **{src: dst for dst, src in enumerate(USED_IDS)}})
_HINT = ("stuffthingmaps_trainval2017 holds 0-based ids 0..181 without the 11 unused thing ids "
         f"{list(UNUSED_IDS)}; values like these come from 1-based (1..182) or other label maps.")


def convert_coco_stuff(job: Job) -> np.ndarray:
    """One stuffthingmaps PNG -> 0..170 / 255 index map."""
    return apply_lut(read_index_png(job.source), COCO_LUT, job.source, _HINT)


def prepare(args: argparse.Namespace) -> None:
    """Convert both splits."""
    coco = os.path.join(args.root, "coco")
    for split, expected in EXPECTED.items():
        out_dir = os.path.join(coco, "stuffthingmaps_ldvc", split)
        jobs = folder_jobs(os.path.join(coco, "stuffthingmaps_trainval2017", split),
                           os.path.join(coco, split), out_dir, f"COCO-Stuff {split}")
        check_count(len(jobs), expected, f"COCO-Stuff {split}")
        counts = run_jobs(convert_coco_stuff, jobs, args.workers, f"COCO-Stuff {split}")
        summarize(split, counts, out_dir)
    write_center_crops(args.root, [(os.path.join("coco", "val2017"),
                                    os.path.join("coco", "stuffthingmaps_ldvc", "val2017"))],
                       args.center_crop, args.workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
