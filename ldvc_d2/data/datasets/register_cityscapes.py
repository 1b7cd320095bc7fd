"""Cityscapes (19 evaluation classes) for cross-dataset and training-free evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata. No seen classes, all unseen: the score to report is the
mIoU over all 19 classes (the training-free papers' "City" column).

* ``cityscapes_val``: the fine-annotation validation split, 500 images (frankfurt, lindau,
  munster), 2048x1024
* ``cityscapes_train``: the fine-annotation training split, 2,975 images

Images are the release's ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (found in the city
subfolders); labels are the flat ``gtFine_ldvc/<split>/<stem>.png`` that
``datasets/prepare_cityscapes.py`` writes from ``*_gtFine_labelIds.png``: trainIds 0..18, 255
ignored (every labelId outside the 19 classes).
"""
from typing import List, Optional

from .builtin_classes import CITYSCAPES_CLASSES
from .zero_shot_sem_seg import ZeroShotSplit, register_zero_shot_splits

__all__ = ["CITYSCAPES_SPLITS", "register_all_cityscapes"]


def _split(name: str, subset: str, count: int) -> ZeroShotSplit:
    return ZeroShotSplit(name, f"cityscapes/leftImg8bit/{subset}", f"cityscapes/gtFine_ldvc/{subset}",
                         CITYSCAPES_CLASSES, tuple(range(len(CITYSCAPES_CLASSES))),
                         "python datasets/prepare_cityscapes.py", count, image_ext="_leftImg8bit.png",
                         images_need_labels=True, recursive_images=True)


CITYSCAPES_SPLITS = (_split("cityscapes_val", "val", 500), _split("cityscapes_train", "train", 2975))


def register_all_cityscapes(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the Cityscapes sets under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_zero_shot_splits(CITYSCAPES_SPLITS, root, prefix)


register_all_cityscapes()
