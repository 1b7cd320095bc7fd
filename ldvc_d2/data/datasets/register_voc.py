"""PASCAL VOC 2012 (20 classes, background ignored) for zero-shot and cross-dataset evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata every set carries.

Sets (name: images; seen / unseen class indices; use):

* ``voc_zs_train_seen``: train_aug, 10,582; 0-14 / 15-19 (DESIGN §3); zero-shot training
* ``voc_zs_val``: val, 1,449; 0-14 / 15-19; zero-shot evaluation
* ``voc_full_train``: train_aug; all / none; fully supervised upper bound
* ``voc20_val``: val; none / all; cross-dataset evaluation of a model trained on COCO-Stuff

Labels are the full 20-class index PNGs written by ``datasets/prepare_voc.py``.
"""
from typing import List, Optional

from .builtin_classes import VOC_CLASSES, VOC_UNSEEN
from .zero_shot_sem_seg import ZeroShotSplit, register_zero_shot_splits

__all__ = ["VOC_SPLITS", "register_all_voc"]

_IMAGES = "VOCdevkit/VOC2012/JPEGImages"
_LABELS = "VOCdevkit/VOC2012/annotations_ldvc"
_PREPARE = "python datasets/prepare_voc.py"
_ALL = tuple(range(len(VOC_CLASSES)))

VOC_SPLITS = (
    ZeroShotSplit("voc_zs_train_seen", _IMAGES, f"{_LABELS}/train_aug", VOC_CLASSES, VOC_UNSEEN,
                  _PREPARE, 10582),
    ZeroShotSplit("voc_zs_val", _IMAGES, f"{_LABELS}/val", VOC_CLASSES, VOC_UNSEEN, _PREPARE, 1449),
    ZeroShotSplit("voc_full_train", _IMAGES, f"{_LABELS}/train_aug", VOC_CLASSES, (), _PREPARE,
                  10582),
    ZeroShotSplit("voc20_val", _IMAGES, f"{_LABELS}/val", VOC_CLASSES, _ALL, _PREPARE, 1449),
)


def register_all_voc(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the VOC sets under ``root`` (default ``$DETECTRON2_DATASETS``) as
    ``prefix + name``; returns the names."""
    return register_zero_shot_splits(VOC_SPLITS, root, prefix)


register_all_voc()
