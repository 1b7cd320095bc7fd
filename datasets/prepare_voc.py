#!/usr/bin/env python
"""Prepare PASCAL VOC 2012 + SBD labels for ldvc_d2: 20-class index PNGs, background ignored.

Reads (under --root):
  VOCdevkit/VOC2012/JPEGImages/*.jpg
  VOCdevkit/VOC2012/SegmentationClass/*.png          palette PNGs: index = VOC id (0 bg, 255 edge)
  VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
  VOCdevkit/VOCaug/dataset/{cls/*.mat,train.txt,val.txt}   SBD, GTcls.Segmentation (optional if
  VOCdevkit/VOC2012/SegmentationClassAug/*.png       an existing index-PNG conversion is present)
Writes:
  VOCdevkit/VOC2012/annotations_ldvc/train_aug/*.png  10,582 = VOC train + SBD train + SBD val
                                                      - VOC val
  VOCdevkit/VOC2012/annotations_ldvc/val/*.png        1,449
Values: VOC id 1..20 -> 0..19, background 0 -> 255, boundary 255 -> 255.
A label's source is the first found of SegmentationClass, SegmentationClassAug, SBD cls/*.mat.
--center-crop N also writes crop<N>/ copies of val (the voc20_val_crop<N> sets).
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from _center_crop import write_center_crops
from _prep_utils import (IGNORE, Job, apply_lut, base_parser, check_count, list_stems, make_lut,
                         read_index_png, read_list, read_mat_field, report_unmatched,
                         run_jobs, run_main, summarize)

EXPECTED = {"train_aug": 10582, "val": 1449}
VOC_LUT = make_lut(256, {0: IGNORE, IGNORE: IGNORE, **{i: i - 1 for i in range(1, 21)}})
_HINT = "VOC labels hold ids 0 (background) .. 20 and 255 (boundary)."


def convert_voc(job: Job) -> np.ndarray:
    """One VOC palette/index PNG or SBD ``.mat`` -> 0..19 / 255 index map."""
    if job.source.endswith(".mat"):
        raw = read_mat_field(job.source, "GTcls", "Segmentation")
    else:
        raw = read_index_png(job.source)
    return apply_lut(raw, VOC_LUT, job.source, _HINT)


def _label_sources(root: str) -> List[Dict[str, str]]:
    """Stem -> label file maps, in order of preference (VOC, SegmentationClassAug, SBD)."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    sources = [list_stems(os.path.join(voc, "SegmentationClass"), ".png")]
    aug = os.path.join(voc, "SegmentationClassAug")
    if os.path.isdir(aug):
        sources.append(list_stems(aug, ".png"))
    sbd_cls = os.path.join(root, "VOCdevkit", "VOCaug", "dataset", "cls")
    if os.path.isdir(sbd_cls):
        sources.append(list_stems(sbd_cls, ".mat"))
    return sources


def split_ids(root: str) -> Dict[str, List[str]]:
    """Image ids of ``train_aug`` and ``val`` (see the module docstring)."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    lists = os.path.join(voc, "ImageSets", "Segmentation")
    val = read_list(os.path.join(lists, "val.txt"))
    train = set(read_list(os.path.join(lists, "train.txt")))
    sbd = os.path.join(root, "VOCdevkit", "VOCaug", "dataset")
    if os.path.isdir(sbd):
        train |= set(read_list(os.path.join(sbd, "train.txt")))
        train |= set(read_list(os.path.join(sbd, "val.txt")))
    aug = os.path.join(voc, "SegmentationClassAug")
    if os.path.isdir(aug):
        train |= set(list_stems(aug, ".png"))
    if not os.path.isdir(sbd) and not os.path.isdir(aug):
        print(f"warning: neither '{sbd}' (SBD) nor '{aug}' found: train_aug = VOC train only",
              file=sys.stderr)
    return {"train_aug": sorted(train - set(val)), "val": sorted(val)}


def build_jobs(root: str, split: str, ids: Sequence[str],
               sources: Sequence[Dict[str, str]]) -> List[Job]:
    """One job per id; every id must have a label and an image."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    images = list_stems(os.path.join(voc, "JPEGImages"), ".jpg")
    out_dir = os.path.join(voc, "annotations_ldvc", split)
    report_unmatched([i for i in ids if i not in images], f"{split} ids without an image in "
                     f"'{os.path.join(voc, 'JPEGImages')}'", fatal=True)
    label = {i: next((s[i] for s in sources if i in s), None) for i in ids}
    report_unmatched([i for i in ids if label[i] is None], f"{split} ids without a label in "
                     "SegmentationClass, SegmentationClassAug or VOCaug/dataset/cls", fatal=True)
    return [Job(label[i], images[i], os.path.join(out_dir, i + ".png")) for i in ids]


def prepare(args: argparse.Namespace) -> None:
    """Convert both splits."""
    sources = _label_sources(args.root)
    for split, ids in split_ids(args.root).items():
        check_count(len(ids), EXPECTED[split], f"VOC {split}")
        jobs = build_jobs(args.root, split, ids, sources)
        counts = run_jobs(convert_voc, jobs, args.workers, f"VOC {split}")
        summarize(split, counts, os.path.dirname(jobs[0].output) if jobs else "(nothing)")
    voc = os.path.join("VOCdevkit", "VOC2012")
    val = (os.path.join(voc, "JPEGImages"), os.path.join(voc, "annotations_ldvc", "val"))
    write_center_crops(args.root, [val], args.center_crop, args.workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
