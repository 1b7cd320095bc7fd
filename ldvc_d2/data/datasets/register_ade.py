"""ADE20K-150 validation set, for cross-dataset evaluation of a model trained on COCO-Stuff.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata. ``ade150_val`` (2,000 images) has no seen classes and
all 150 unseen: the model never trained on ADE20K; the score to report is the mIoU over all classes.
Labels are the 0-149 index PNGs written by ``datasets/prepare_ade20k.py``.
"""
from typing import List, Optional

from .builtin_classes import ADE150_CLASSES
from .zero_shot_sem_seg import ZeroShotSplit, register_zero_shot_splits

__all__ = ["ADE150_SPLITS", "register_all_ade"]

ADE150_SPLITS = (
    ZeroShotSplit("ade150_val", "ADEChallengeData2016/images/validation",
                  "ADEChallengeData2016/annotations_ldvc/validation", ADE150_CLASSES,
                  tuple(range(len(ADE150_CLASSES))), "python datasets/prepare_ade20k.py", 2000,
                  images_need_labels=True),
)


def register_all_ade(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register ``ade150_val`` under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_zero_shot_splits(ADE150_SPLITS, root, prefix)


register_all_ade()
