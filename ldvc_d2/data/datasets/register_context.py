"""PASCAL Context (59 classes, background ignored) for zero-shot and cross-dataset evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata every set carries.

Sets (name: images; seen / unseen class indices; use):

* ``context59_zs_train_seen``: train, 4,996; 49 / 10 (ZS3Net split); zero-shot training
* ``context59_zs_val``: val, 5,104; 49 / 10; zero-shot evaluation
* ``context59_val``: val; none / all; cross-dataset evaluation of a model trained on COCO-Stuff

Labels are the 59-class index PNGs written by ``datasets/prepare_context.py``.
"""
from typing import List, Optional

from .builtin_classes import CONTEXT59_CLASSES, CONTEXT59_UNSEEN
from .zero_shot_sem_seg import ZeroShotSplit, register_zero_shot_splits

__all__ = ["CONTEXT59_SPLITS", "register_all_context"]

_IMAGES = "VOCdevkit/VOC2010/JPEGImages"
_LABELS = "VOCdevkit/VOC2010/annotations_ctx59"
_PREPARE = "python datasets/prepare_context.py"
_ALL = tuple(range(len(CONTEXT59_CLASSES)))

CONTEXT59_SPLITS = (
    ZeroShotSplit("context59_zs_train_seen", _IMAGES, f"{_LABELS}/train", CONTEXT59_CLASSES,
                  CONTEXT59_UNSEEN, _PREPARE, 4996),
    ZeroShotSplit("context59_zs_val", _IMAGES, f"{_LABELS}/val", CONTEXT59_CLASSES,
                  CONTEXT59_UNSEEN, _PREPARE, 5104),
    ZeroShotSplit("context59_val", _IMAGES, f"{_LABELS}/val", CONTEXT59_CLASSES, _ALL, _PREPARE,
                  5104),
)


def register_all_context(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the PASCAL Context sets under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_zero_shot_splits(CONTEXT59_SPLITS, root, prefix)


register_all_context()
