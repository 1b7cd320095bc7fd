"""COCO-Stuff 164k (171 classes) for zero-shot training and evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata every set carries.

Sets (name: images; seen / unseen class indices; use):

* ``coco_stuff_zs_train_seen``: train2017, 118,287; 156 / 15 (DESIGN §3); zero-shot training
* ``coco_stuff_zs_val``: val2017, 5,000; 156 / 15; zero-shot evaluation
* ``coco_stuff_full_train``: train2017; all / none; fully supervised upper bound

Labels are the contiguous 0-170 index PNGs written by ``datasets/prepare_coco_stuff.py``.
"""
from typing import List, Optional, Sequence

from .builtin_classes import COCO_STUFF_CLASSES, COCO_STUFF_UNSEEN
from .zero_shot_sem_seg import ZeroShotSplit, register_zero_shot_splits

__all__ = ["COCO_STUFF_SPLITS", "register_all_coco_stuff"]

_LABELS = "coco/stuffthingmaps_ldvc"
_PREPARE = "python datasets/prepare_coco_stuff.py"


def _split(name: str, subset: str, unseen: Sequence[int], count: int) -> ZeroShotSplit:
    return ZeroShotSplit(name, f"coco/{subset}", f"{_LABELS}/{subset}", COCO_STUFF_CLASSES, unseen,
                         _PREPARE, count, images_need_labels=True)


COCO_STUFF_SPLITS = (
    _split("coco_stuff_zs_train_seen", "train2017", COCO_STUFF_UNSEEN, 118287),
    _split("coco_stuff_zs_val", "val2017", COCO_STUFF_UNSEEN, 5000),
    _split("coco_stuff_full_train", "train2017", (), 118287),
)


def register_all_coco_stuff(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the COCO-Stuff sets under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_zero_shot_splits(COCO_STUFF_SPLITS, root, prefix)


register_all_coco_stuff()
