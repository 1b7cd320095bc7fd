"""COCO-Stuff 164k (171 classes) for zero-shot training and evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata every set carries.

Sets (name: images; seen / unseen class indices; use):

* ``coco_stuff_zs_train_seen``: train2017, 118,287; 156 / 15 (DESIGN §3); zero-shot training
* ``coco_stuff_zs_val``: val2017, 5,000; 156 / 15; zero-shot evaluation
* ``coco_stuff_full_train``: train2017; all / none; fully supervised upper bound
* ``coco_object_val``: val2017; none / all of 81 = the 80 thing classes (labels 0..79, as in
  COCO-Stuff) + background (80: all 91 stuff classes); 255 (unlabelled) ignored; CLIPtrase's
  COCO-Object, clean conversion (datasets/README.md describes the official code's variant)
* ``coco_object_val_official``: the classes and metadata of ``coco_object_val`` on the 171-class
  maps of ``coco_stuff_zs_val``, scored as CLIPtrase's official script scores COCO-Object (81
  classes, every 255 turned into background): ``gt_label_map`` 0..79 unchanged, 80 ('banner') stays
  80 = background, 81..170 -> 255 (not scored), 255 (unlabelled) -> 80; ``no_object_labels`` [255]
  (the script skips an image only when its 171-class map is all unlabelled); for its parity configs
* ``coco_object_val_harness``: ``coco_object_val`` scored as the training-free harnesses (SCLIP,
  NACLIP, ClearCLIP, ProxyCLIP; GroupViT's ``cvt_coco_object.py``) score COCO-Object: unlabelled
  (255) counts as background (``gt_label_map`` {255: 80}), so no pixel is ignored
* ``coco_stuff_zs_val_crop224`` / ``_crop336``, ``coco_object_val_crop224`` / ``_crop336``,
  ``coco_object_val_official_crop224`` / ``_crop336``: the centre-crop protocol (CLIPtrase's
  COCO-Stuff-171 mIoU is the mIoU over all classes of the first)

Labels are the contiguous 0-170 index PNGs written by ``datasets/prepare_coco_stuff.py`` and, for
COCO-Object, the 0-80 PNGs ``datasets/prepare_coco_object.py`` derives from them.
"""
import dataclasses
from typing import List, Optional, Sequence

from .builtin_classes import (COCO_OBJECT_BACKGROUND_NAMES, COCO_OBJECT_CLASSES, COCO_STUFF_CLASSES,
                              COCO_STUFF_UNSEEN)
from .zero_shot_sem_seg import (CENTER_CROP_SIZES, ZeroShotSplit, center_crop_variant,
                                register_zero_shot_splits)

__all__ = ["COCO_STUFF_SPLITS", "register_all_coco_stuff"]

_LABELS = "coco/stuffthingmaps_ldvc"
_PREPARE = "python datasets/prepare_coco_stuff.py"


def _split(name: str, subset: str, unseen: Sequence[int], count: int) -> ZeroShotSplit:
    return ZeroShotSplit(name, f"coco/{subset}", f"{_LABELS}/{subset}", COCO_STUFF_CLASSES, unseen,
                         _PREPARE, count, images_need_labels=True)


_ZS_VAL = _split("coco_stuff_zs_val", "val2017", COCO_STUFF_UNSEEN, 5000)
_OBJECT_VAL = ZeroShotSplit(
    "coco_object_val", "coco/val2017", "coco/coco_object_ldvc/val2017", COCO_OBJECT_CLASSES,
    tuple(range(len(COCO_OBJECT_CLASSES))), "python datasets/prepare_coco_object.py", 5000,
    images_need_labels=True, background_class=len(COCO_OBJECT_CLASSES) - 1,
    background_names=COCO_OBJECT_BACKGROUND_NAMES)
# The official script's COCO-Object (SEED_SYSTEMS §2.2, "Known quirks"; dataset_cfg.py:12-16,
# clip_self_correlation.py:164-166, 217-218; metric.py drops labels >= 81).
_OBJECT_OFFICIAL = dataclasses.replace(
    _OBJECT_VAL, name="coco_object_val_official", label_dir=_ZS_VAL.label_dir, prepare_command=_PREPARE,
    gt_label_map=tuple((i, 255) for i in range(81, len(COCO_STUFF_CLASSES))) + ((255, 80),),
    no_object_labels=(255,))
# The training-free harnesses' conversion maps things 0..79 -> 1..80 and every other value, 255
# included, to background 0; here background stays index 80 and only 255 is remapped.
_OBJECT_HARNESS = dataclasses.replace(_OBJECT_VAL, name="coco_object_val_harness", gt_label_map=((255, 80),))
COCO_STUFF_SPLITS = (
    _split("coco_stuff_zs_train_seen", "train2017", COCO_STUFF_UNSEEN, 118287),
    _ZS_VAL,
    _split("coco_stuff_full_train", "train2017", (), 118287),
    _OBJECT_VAL,
    _OBJECT_OFFICIAL,
    _OBJECT_HARNESS,
) + tuple(center_crop_variant(s, n) for s in (_ZS_VAL, _OBJECT_VAL, _OBJECT_OFFICIAL)
          for n in CENTER_CROP_SIZES)


def register_all_coco_stuff(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the COCO-Stuff sets under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_zero_shot_splits(COCO_STUFF_SPLITS, root, prefix)


register_all_coco_stuff()
