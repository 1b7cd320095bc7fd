#!/usr/bin/env python
"""Prepare PASCAL Context-60 val labels for ldvc_d2: background (label 0) + the 59 classes (1..59).

CLIPtrase's PC-60 (and MMSegmentation's PascalContextDataset) counts everything outside the 59
classes as one "background" class: the 400 rare classes and unlabelled pixels alike. So the labels
are the Context-59 labels of prepare_context.py shifted by one, with its ignored pixels as 0.

Reads (under --root), the same files as prepare_context.py:
  VOCdevkit/VOC2010/JPEGImages/*.jpg
  VOCdevkit/VOC2010/trainval/*.mat     key LabelMap (459-class ids)
  VOCdevkit/VOC2010/labels.txt         459 lines "id: name"
  VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt   (else ImageSets/Main/val.txt)
Writes:
  VOCdevkit/VOC2010/annotations_ctx60/val/*.png   5,104
Values: the 59 classes -> 1..59 (Context-59 index + 1); every other id and 0 -> 0. Nothing ignored.
--center-crop N also writes crop<N>/ copies.
"""
import argparse
import functools
import os
from typing import Optional, Sequence

import numpy as np

from _prep_utils import IGNORE, INVALID, base_parser, run_main
from prepare_context import context_lut, convert_context, convert_split, crop_val

OUT = "annotations_ctx60"


def context60_lut(labels_txt: str) -> np.ndarray:
    """The Context-59 table with 0..58 -> 1..59 and 255 -> 0 (background); invalid ids stay invalid."""
    lut59 = context_lut(labels_txt)
    return np.where(lut59 == INVALID, INVALID, np.where(lut59 == IGNORE, 0, lut59 + 1))


def prepare(args: argparse.Namespace) -> None:
    """Convert the val split."""
    ctx = os.path.join(args.root, "VOCdevkit", "VOC2010")
    convert = functools.partial(convert_context, context60_lut(os.path.join(ctx, "labels.txt")))
    convert_split(args, ctx, "val", convert, OUT, "Context-60")
    crop_val(args, OUT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
