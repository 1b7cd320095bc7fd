#!/usr/bin/env python
"""Prepare PASCAL Context-459 val labels for ldvc_d2: all 459 classes, 16-bit PNGs.

The literature's conversion (as in CLIPtrase's and MaskFormer's PC-459): label = LabelMap id - 1 in
unsigned 16 bits, so the classes are 0..458 in labels.txt order and unlabelled (0) becomes 65535,
the ignore value. The class names (ldvc_d2/data/datasets/context459_classes.py) are those of
labels.txt; a labels.txt that names an id differently gets a warning listing the differences.

Reads (under --root), the same files as prepare_context.py:
  VOCdevkit/VOC2010/JPEGImages/*.jpg
  VOCdevkit/VOC2010/trainval/*.mat     key LabelMap (459-class ids, 0 = unlabelled)
  VOCdevkit/VOC2010/labels.txt         459 lines "id: name"
  VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt   (else ImageSets/Main/val.txt)
Writes:
  VOCdevkit/VOC2010/annotations_ctx459/val/*.png   5,104 16-bit PNGs
Values: id 1..459 -> 0..458, 0 -> 65535. --center-crop N also writes crop<N>/ copies.
"""
import argparse
import functools
import os
import warnings
from typing import Optional, Sequence

import numpy as np

from _prep_utils import IGNORE16, base_parser, load_class_module, make_lut, run_main
from prepare_context import NUM_FULL_CLASSES, convert_context, convert_split, crop_val, read_labels_txt

OUT = "annotations_ctx459"
CONTEXT459_CLASSES = load_class_module("context459_classes").CONTEXT459_CLASSES
CONTEXT459_LUT = make_lut(NUM_FULL_CLASSES + 1, {0: IGNORE16, **{i: i - 1 for i in range(1, 460)}})


class NameWarning(UserWarning):
    """labels.txt names a class differently from ldvc_d2's Context-459 list."""


def check_names(labels_txt: str) -> None:
    """Warn (:class:`NameWarning`) where labels.txt's name of id k + 1 is not class k's name."""
    names = {i: n for n, i in read_labels_txt(labels_txt).items()}
    differ = [f"{i}: {names.get(i)!r} (ldvc_d2: {CONTEXT459_CLASSES[i - 1]!r})"
              for i in range(1, NUM_FULL_CLASSES + 1) if names.get(i) != CONTEXT459_CLASSES[i - 1]]
    if differ:
        warnings.warn(f"{labels_txt}: {len(differ)} ids are named differently, the labels keep the "
                      f"ids (label = id - 1): " + "; ".join(differ[:5]), NameWarning, stacklevel=2)


def prepare(args: argparse.Namespace) -> None:
    """Convert the val split."""
    ctx = os.path.join(args.root, "VOCdevkit", "VOC2010")
    check_names(os.path.join(ctx, "labels.txt"))
    convert = functools.partial(convert_context, CONTEXT459_LUT, dtype=np.uint16)
    convert_split(args, ctx, "val", convert, OUT, "Context-459")
    crop_val(args, OUT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_main(prepare, base_parser(__doc__), argv)


if __name__ == "__main__":
    raise SystemExit(main())
