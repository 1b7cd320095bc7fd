"""ADE20K validation sets (150 and 847 classes), for cross-dataset / training-free evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata. Both have no seen classes and all unseen: the model
never trained on ADE20K; the score to report is the mIoU over all classes.

* ``ade150_val``: ADEChallengeData2016 validation, 2,000 images; 0-149 index PNGs written by
  ``datasets/prepare_ade20k.py``; ``prompt_class_names`` with CLIPtrase's "bed "
* ``ade_full_val``: ADE20K 2021 validation, 2,000 images (short side at most 512, as in the
  literature's conversion); 847 classes, 16-bit PNGs, ignore 65535; ``datasets/prepare_ade_full.py``
* ``<name>_crop224`` / ``_crop336`` of both: the centre-crop protocol
"""
from typing import List, Optional

from .ade_full_classes import ADE_FULL_CLASSES
from .builtin_classes import ADE150_CLASSES, ADE150_PROMPT_NAMES
from .zero_shot_sem_seg import (CENTER_CROP_SIZES, ZeroShotSplit, center_crop_variant,
                                register_zero_shot_splits)

__all__ = ["ADE_SPLITS", "register_all_ade"]

_EVAL = (
    ZeroShotSplit("ade150_val", "ADEChallengeData2016/images/validation",
                  "ADEChallengeData2016/annotations_ldvc/validation", ADE150_CLASSES,
                  tuple(range(len(ADE150_CLASSES))), "python datasets/prepare_ade20k.py", 2000,
                  images_need_labels=True, prompt_class_names=ADE150_PROMPT_NAMES),
    ZeroShotSplit("ade_full_val", "ADE20K_2021_17_01/images_ldvc/validation",
                  "ADE20K_2021_17_01/annotations_ldvc/validation", ADE_FULL_CLASSES,
                  tuple(range(len(ADE_FULL_CLASSES))), "python datasets/prepare_ade_full.py", 2000,
                  images_need_labels=True, ignore_label=65535),
)
ADE_SPLITS = _EVAL + tuple(center_crop_variant(s, n) for s in _EVAL for n in CENTER_CROP_SIZES)


def register_all_ade(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the ADE20K sets under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_zero_shot_splits(ADE_SPLITS, root, prefix)


register_all_ade()
