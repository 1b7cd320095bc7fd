"""PASCAL VOC 2012 (20 classes, background ignored) for zero-shot and cross-dataset evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata every set carries.

Sets (name: images; seen / unseen class indices; use):

* ``voc_zs_train_seen``: train_aug, 10,582; 0-14 / 15-19 (DESIGN §3); zero-shot training
* ``voc_zs_val``: val, 1,449; 0-14 / 15-19; zero-shot evaluation
* ``voc_full_train``: train_aug; all / none; fully supervised upper bound
* ``voc20_val``: val; none / all; cross-dataset evaluation of a model trained on COCO-Stuff
* ``voc21_val``: val; none / all of 21 = background (label 0) + the 20 classes; CLIPtrase's VOC-21
* ``voc21_val_official``: the files of ``voc21_val`` scored as CLIPtrase's official script scores
  VOC-21 (it reads the 20-class maps and turns every 255 into background): metadata
  ``gt_label_map`` {255: 0}, so boundary pixels count as background; for its parity configs
* ``voc20_val_crop224`` / ``_crop336``, ``voc21_val_crop224`` / ``_crop336``,
  ``voc21_val_official_crop224`` / ``_crop336``: the centre-crop protocol

Labels are the full 20-class index PNGs written by ``datasets/prepare_voc.py`` (background and
boundary 255) and, for VOC-21, the VOC ids as they are (0 background, 1..20, 255 boundary) written by
``datasets/prepare_voc21.py``. Every set carries ``prompt_class_names`` with CLIPtrase's "tv".
"""
import dataclasses
from typing import List, Optional, Sequence

from .builtin_classes import (BACKGROUND, VOC21_BACKGROUND_NAMES, VOC21_CLASSES, VOC_CLASSES,
                              VOC_PROMPT_NAMES, VOC_UNSEEN)
from .zero_shot_sem_seg import (CENTER_CROP_SIZES, ZeroShotSplit, center_crop_variant,
                                register_zero_shot_splits)

__all__ = ["VOC_SPLITS", "register_all_voc"]

_IMAGES = "VOCdevkit/VOC2012/JPEGImages"
_LABELS = "VOCdevkit/VOC2012/annotations_ldvc"
_PREPARE = "python datasets/prepare_voc.py"
_ALL = tuple(range(len(VOC_CLASSES)))


def _voc20(name: str, label_dir: str, unseen: Sequence[int], count: int) -> ZeroShotSplit:
    return ZeroShotSplit(name, _IMAGES, f"{_LABELS}/{label_dir}", VOC_CLASSES, unseen, _PREPARE, count,
                         prompt_class_names=VOC_PROMPT_NAMES)


_VOC20_VAL = _voc20("voc20_val", "val", _ALL, 1449)
_VOC21_VAL = ZeroShotSplit(
    "voc21_val", _IMAGES, "VOCdevkit/VOC2012/annotations_voc21/val", VOC21_CLASSES,
    tuple(range(len(VOC21_CLASSES))), "python datasets/prepare_voc21.py", 1449,
    prompt_class_names=(BACKGROUND,) + VOC_PROMPT_NAMES, background_class=0,
    background_names=VOC21_BACKGROUND_NAMES)
# The official script's VOC-21 (SEED_SYSTEMS §2.2, "Known quirks"; clip_self_correlation.py:164-166).
# Its skip of images without objects looks at the 20-class maps, where background and boundary are
# both 255: here the default no_object_labels, background 0 and ignore 255 of the stored VOC ids.
_VOC21_OFFICIAL = dataclasses.replace(_VOC21_VAL, name="voc21_val_official", gt_label_map=((255, 0),))
VOC_SPLITS = (
    _voc20("voc_zs_train_seen", "train_aug", VOC_UNSEEN, 10582),
    _voc20("voc_zs_val", "val", VOC_UNSEEN, 1449),
    _voc20("voc_full_train", "train_aug", (), 10582),
    _VOC20_VAL,
    _VOC21_VAL,
    _VOC21_OFFICIAL,
) + tuple(center_crop_variant(s, n) for s in (_VOC20_VAL, _VOC21_VAL, _VOC21_OFFICIAL)
          for n in CENTER_CROP_SIZES)


def register_all_voc(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the VOC sets under ``root`` (default ``$DETECTRON2_DATASETS``) as
    ``prefix + name``; returns the names."""
    return register_zero_shot_splits(VOC_SPLITS, root, prefix)


register_all_voc()
