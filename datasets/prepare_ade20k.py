#!/usr/bin/env python
"""Prepare ADE20K (SceneParsing, ADEChallengeData2016) validation labels for ldvc_d2: 150 classes.

Reads (under --root):
  ADEChallengeData2016/images/validation/*.jpg
  ADEChallengeData2016/annotations/validation/*.png    0 = other/unlabeled, 1..150 = classes
Writes:
  ADEChallengeData2016/annotations_ldvc/validation/*.png   2,000
Values: 0 -> 255, 1..150 -> 0..149. --center-crop N also writes crop<N>/ copies.
"""
import argparse
import os
from typing import Optional, Sequence

import numpy as np

from _center_crop import write_center_crops
from _prep_utils import (IGNORE, Job, apply_lut, base_parser, check_count, folder_jobs, make_lut,
                         read_index_png, run_jobs, run_main, summarize)

EXPECTED = {"validation": 2000}
ADE_LUT = make_lut(256, {0: IGNORE, **{i: i - 1 for i in range(1, 151)}})
_HINT = "ADE20K SceneParsing annotations hold 0 (other) and the class ids 1..150."


def convert_ade(job: Job) -> np.ndarray:
    """One ADE20K annotation PNG -> 0..149 / 255 index map."""
    return apply_lut(read_index_png(job.source), ADE_LUT, job.source, _HINT)


def prepare(args: argparse.Namespace) -> None:
    """Convert the validation split."""
    ade = os.path.join(args.root, "ADEChallengeData2016")
    for split, expected in EXPECTED.items():
        out_dir = os.path.join(ade, "annotations_ldvc", split)
        jobs = folder_jobs(os.path.join(ade, "annotations", split),
                           os.path.join(ade, "images", split), out_dir, f"ADE20K {split}")
        check_count(len(jobs), expected, f"ADE20K {split}")
        counts = run_jobs(convert_ade, jobs, args.workers, f"ADE20K {split}")
        summarize(split, counts, out_dir)
    ade = "ADEChallengeData2016"
    write_center_crops(args.root, [(os.path.join(ade, "images", "validation"),
                                    os.path.join(ade, "annotations_ldvc", "validation"))],
                       args.center_crop, args.workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
