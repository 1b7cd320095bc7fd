#!/usr/bin/env python
"""Prepare PASCAL VOC 2012 val labels with background as a class (VOC-21, CLIPtrase's benchmark).

Reads (under --root):
  VOCdevkit/VOC2012/JPEGImages/*.jpg
  VOCdevkit/VOC2012/SegmentationClass/*.png          palette PNGs: index = VOC id (0 bg, 255 edge)
  VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt
Writes:
  VOCdevkit/VOC2012/annotations_voc21/val/*.png       1,449
Values: the VOC ids as they are: 0 background, 1..20 the classes, 255 boundary (ignored).
(CLIPtrase's official code instead reads the 20-class labels and scores every 255 pixel, boundary
included, as background; see datasets/README.md.) --center-crop N also writes crop<N>/ copies.
"""
import argparse
import os
from typing import List, Optional, Sequence

import numpy as np

from _center_crop import write_center_crops
from _prep_utils import (IGNORE, Job, apply_lut, base_parser, check_count, list_stems, make_lut,
                         read_index_png, read_list, report_unmatched, run_jobs, run_main, summarize)

EXPECTED_VAL = 1449
VOC = os.path.join("VOCdevkit", "VOC2012")
OUT = os.path.join(VOC, "annotations_voc21", "val")
VOC21_LUT = make_lut(256, {IGNORE: IGNORE, **{i: i for i in range(21)}})
_HINT = "VOC labels hold ids 0 (background) .. 20 and 255 (boundary)."


def convert_voc21(job: Job) -> np.ndarray:
    """One VOC palette PNG -> 0..20 / 255 index map (values checked, kept)."""
    return apply_lut(read_index_png(job.source), VOC21_LUT, job.source, _HINT)


def build_jobs(root: str) -> List[Job]:
    """One job per id of val.txt; every id needs its SegmentationClass PNG and its image."""
    voc = os.path.join(root, VOC)
    ids = read_list(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"))
    labels = list_stems(os.path.join(voc, "SegmentationClass"), ".png")
    images = list_stems(os.path.join(voc, "JPEGImages"), ".jpg")
    report_unmatched([i for i in ids if i not in labels],
                     "val ids without a label in VOC2012/SegmentationClass", fatal=True)
    report_unmatched([i for i in ids if i not in images],
                     "val ids without an image in VOC2012/JPEGImages", fatal=True)
    return [Job(labels[i], images[i], os.path.join(root, OUT, i + ".png")) for i in sorted(ids)]


def prepare(args: argparse.Namespace) -> None:
    """Convert the val split."""
    jobs = build_jobs(args.root)
    check_count(len(jobs), EXPECTED_VAL, "VOC-21 val")
    counts = run_jobs(convert_voc21, jobs, args.workers, "VOC-21 val")
    summarize("val", counts, os.path.join(args.root, OUT))
    write_center_crops(args.root, [(os.path.join(VOC, "JPEGImages"), OUT)], args.center_crop,
                       args.workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
