#!/usr/bin/env python
"""Prepare PASCAL Context labels for ldvc_d2: 59-class index PNGs, everything else ignored.

Reads (under --root), without the `detail` API:
  VOCdevkit/VOC2010/JPEGImages/*.jpg
  VOCdevkit/VOC2010/trainval/*.mat     PASCAL-Context full labels, key LabelMap (459-class ids)
  VOCdevkit/VOC2010/labels.txt         459 lines "id: name"
  VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt   split lists; where absent,
                                       VOC2010's ImageSets/Main/{train,val}.txt, keeping the ids
                                       that have a trainval/*.mat (a warning lists the others)
Writes:
  VOCdevkit/VOC2010/annotations_ctx59/{train,val}/*.png   4,996 / 5,104
Values: the 59 classes (found in labels.txt by name) -> 0..58 in ldvc_d2's order; every other id
(the 400 rare classes, 0 = unlabeled) -> 255. --center-crop N also writes crop<N>/ copies of val.
prepare_context60.py and prepare_context459.py reuse this script's reading of the same files.
"""
import argparse
import functools
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from _center_crop import write_center_crops
from _prep_utils import (CLASSES, IGNORE, Job, LabelError, apply_lut, base_parser, check_count,
                         list_stems, make_lut, read_list, read_mat_field, report_unmatched,
                         run_jobs, run_main, summarize)

EXPECTED = {"train": 4996, "val": 5104}
NUM_FULL_CLASSES = 459
_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def read_labels_txt(labels_txt: str) -> Dict[str, int]:
    """name -> id of PASCAL-Context's ``labels.txt`` (459 lines "id: name")."""
    if not os.path.isfile(labels_txt):
        raise FileNotFoundError(f"'{labels_txt}' (459 lines 'id: name') not found; it ships with "
                                "PASCAL-Context's trainval.tar.gz, see datasets/README.md")
    ids = {}
    with open(labels_txt) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                match = _LINE.match(line)
                if match is None:
                    raise LabelError(f"{labels_txt}:{n}: expected 'id: name', got {line.strip()!r}")
                ids[match.group(2)] = int(match.group(1))
    if len(ids) != NUM_FULL_CLASSES:
        raise LabelError(f"{labels_txt}: {len(ids)} classes, expected {NUM_FULL_CLASSES}")
    return ids


def context_lut(labels_txt: str) -> np.ndarray:
    """Lookup table from 459-class ids (and 0) to 0..58 / 255, matched by name via labels.txt."""
    ids = read_labels_txt(labels_txt)
    missing = [name for name in CLASSES.CONTEXT59_CLASSES if name not in ids]
    if missing:
        raise LabelError(f"{labels_txt}: no line for the Context-59 classes {missing}")
    mapping = {0: IGNORE, **{i: IGNORE for i in ids.values()}}
    mapping.update({ids[name]: k for k, name in enumerate(CLASSES.CONTEXT59_CLASSES)})
    return make_lut(max(ids.values()) + 1, mapping)


def convert_context(lut: np.ndarray, job: Job, dtype: type = np.uint8) -> np.ndarray:
    """One PASCAL-Context ``LabelMap`` .mat -> index map through ``lut`` (0..58 / 255 for Context-59)."""
    raw = read_mat_field(job.source, "LabelMap")
    return apply_lut(raw, lut, job.source, "LabelMap holds 0 and the ids of labels.txt.", dtype)


def split_list(ctx: str, split: str) -> Tuple[str, bool]:
    """The split list to use and whether it is the Context list (else VOC2010 Main's)."""
    context_list = os.path.join(ctx, "ImageSets", "SegmentationContext", f"{split}.txt")
    if os.path.isfile(context_list):
        return context_list, True
    return os.path.join(ctx, "ImageSets", "Main", f"{split}.txt"), False


def build_jobs(ctx: str, split: str, out_name: str = "annotations_ctx59") -> List[Job]:
    """One job per listed id; a missing image is an error (see the module docstring for labels)."""
    list_path, is_context_list = split_list(ctx, split)
    ids = read_list(list_path)
    mats = list_stems(os.path.join(ctx, "trainval"), ".mat")
    images = list_stems(os.path.join(ctx, "JPEGImages"), ".jpg")
    report_unmatched([i for i in ids if i not in mats],
                     f"ids of '{list_path}' without a label in '{os.path.join(ctx, 'trainval')}'"
                     + ("" if is_context_list else " (skipped)"), fatal=is_context_list)
    ids = [i for i in ids if i in mats]
    report_unmatched([i for i in ids if i not in images],
                     f"ids of '{list_path}' without an image in 'JPEGImages'", fatal=True)
    out_dir = os.path.join(ctx, out_name, split)
    return [Job(mats[i], images[i], os.path.join(out_dir, i + ".png")) for i in sorted(ids)]


def prepare(args: argparse.Namespace) -> None:
    """Convert both splits."""
    ctx = os.path.join(args.root, "VOCdevkit", "VOC2010")
    convert = functools.partial(convert_context, context_lut(os.path.join(ctx, "labels.txt")))
    for split in EXPECTED:
        convert_split(args, ctx, split, convert, "annotations_ctx59", "Context")
    crop_val(args, "annotations_ctx59")


def convert_split(args: argparse.Namespace, ctx: str, split: str, convert, out_name: str, what: str) -> None:
    """Convert one split's labels into ``VOC2010/<out_name>/<split>`` (count checked, summary printed);
    shared by the Context-59, -60 and -459 scripts."""
    jobs = build_jobs(ctx, split, out_name)
    check_count(len(jobs), EXPECTED[split], f"PASCAL {what} {split}")
    counts = run_jobs(convert, jobs, args.workers, f"{what} {split}")
    summarize(split, counts, os.path.join(ctx, out_name, split))


def crop_val(args: argparse.Namespace, out_name: str) -> None:
    """The ``--center-crop`` copies of the prepared val labels in ``VOC2010/<out_name>/val``."""
    ctx = os.path.join("VOCdevkit", "VOC2010")
    val = (os.path.join(ctx, "JPEGImages"), os.path.join(ctx, out_name, "val"))
    write_center_crops(args.root, [val], args.center_crop, args.workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
