"""PASCAL Context (59 classes, background ignored) for zero-shot and cross-dataset evaluation.

Registered on import, under ``$DETECTRON2_DATASETS`` (read at import time); see
:mod:`.zero_shot_sem_seg` for the metadata every set carries.

Sets (name: images; seen / unseen class indices; use):

* ``context59_zs_train_seen``: train, 4,996; 49 / 10 (ZS3Net split); zero-shot training
* ``context59_zs_val``: val, 5,104; 49 / 10; zero-shot evaluation
* ``context59_val``: val; none / all; cross-dataset evaluation of a model trained on COCO-Stuff
* ``context60_val``: val; none / all of 60 = background (label 0: everything outside the 59
  classes) + the 59 classes at 1..59; CLIPtrase's PC-60
* ``context459_val``: val; none / all of the 459 classes of the full annotation, 16-bit labels,
  ignore 65535 (unlabelled)
* ``<name>_crop224`` / ``_crop336`` of the three ``*_val`` sets: the centre-crop protocol

Labels are the index PNGs written by ``datasets/prepare_context.py`` (59 classes),
``prepare_context60.py`` and ``prepare_context459.py``. ``prompt_class_names`` carry CLIPtrase's
"diningtable" for "table" (Context-59/60).
"""
from typing import List, Optional

from .builtin_classes import (BACKGROUND, CONTEXT59_CLASSES, CONTEXT59_PROMPT_NAMES,
                              CONTEXT59_UNSEEN, CONTEXT60_BACKGROUND_NAMES, CONTEXT60_CLASSES)
from .context459_classes import CONTEXT459_CLASSES
from .zero_shot_sem_seg import (CENTER_CROP_SIZES, ZeroShotSplit, center_crop_variant,
                                register_zero_shot_splits)

__all__ = ["CONTEXT_SPLITS", "register_all_context"]

_IMAGES = "VOCdevkit/VOC2010/JPEGImages"
_LABELS = "VOCdevkit/VOC2010/annotations_ctx59"
_PREPARE = "python datasets/prepare_context.py"
_ALL = tuple(range(len(CONTEXT59_CLASSES)))

_PROMPT = {"prompt_class_names": CONTEXT59_PROMPT_NAMES}
_EVAL = (
    ZeroShotSplit("context59_val", _IMAGES, f"{_LABELS}/val", CONTEXT59_CLASSES, _ALL, _PREPARE,
                  5104, **_PROMPT),
    ZeroShotSplit("context60_val", _IMAGES, "VOCdevkit/VOC2010/annotations_ctx60/val",
                  CONTEXT60_CLASSES, tuple(range(60)), "python datasets/prepare_context60.py", 5104,
                  prompt_class_names=(BACKGROUND,) + CONTEXT59_PROMPT_NAMES, background_class=0,
                  background_names=CONTEXT60_BACKGROUND_NAMES),
    ZeroShotSplit("context459_val", _IMAGES, "VOCdevkit/VOC2010/annotations_ctx459/val",
                  CONTEXT459_CLASSES, tuple(range(459)), "python datasets/prepare_context459.py",
                  5104, ignore_label=65535),
)
CONTEXT_SPLITS = (
    ZeroShotSplit("context59_zs_train_seen", _IMAGES, f"{_LABELS}/train", CONTEXT59_CLASSES,
                  CONTEXT59_UNSEEN, _PREPARE, 4996, **_PROMPT),
    ZeroShotSplit("context59_zs_val", _IMAGES, f"{_LABELS}/val", CONTEXT59_CLASSES,
                  CONTEXT59_UNSEEN, _PREPARE, 5104, **_PROMPT),
) + _EVAL + tuple(center_crop_variant(s, n) for s in _EVAL for n in CENTER_CROP_SIZES)


def register_all_context(root: Optional[str] = None, prefix: str = "") -> List[str]:
    """Register the PASCAL Context sets under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_zero_shot_splits(CONTEXT_SPLITS, root, prefix)


register_all_context()
