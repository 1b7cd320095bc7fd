"""MODEL.TRAINING_FREE: the evaluation harness shared by the training-free CLIP segmentors (MaskCLIP, SCLIP,
ClearCLIP, NACLIP, ProxyCLIP), read by :class:`~ldvc_d2.modeling.training_free.TrainingFreeCLIPSegmentor`.

The four released harnesses (SCLIP, NACLIP, ClearCLIP, ProxyCLIP; mmseg 1.x, ``postprocess_result``) post-process
the same way: P = softmax over all query words of LOGIT_SCALE · cos, a class's probability is the max over its
words (synonyms, background words), SCLIP's area threshold, then pixels whose best probability is below
PROB_THRESHOLD become background. Per-benchmark values are in configs/<method>/ (docs/training_free.md).
"""
from typing import List

from detectron2.config import CfgNode as CN

__all__ = ["add_training_free_config", "training_free_config_problems"]


def add_training_free_config(cfg: CN) -> None:
    """Add MODEL.TRAINING_FREE.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    t = cfg.MODEL.TRAINING_FREE = CN()
    t.LOGIT_SCALE = 40.0  # multiplies patch-text cosines before the softmax (SCLIP/NACLIP/ProxyCLIP 40, ClearCLIP 50); 0 = CLIP's own
    t.PROB_THRESHOLD = 0.0  # pixels whose best class probability is below it become the dataset's background class (0 = off)
    t.AREA_THRESHOLD = 0.0  # SCLIP: drop foreground classes predicted on <= this share of the foreground pixels (0 = off)
    # Words whose embeddings all stand for the dataset's background class (metadata background_class); [] = the
    # dataset's background_names metadata. SCLIP/ProxyCLIP VOC21 and COCO-Object: 26 words (configs/<method>/).
    t.BACKGROUND_WORDS = []
    # Optional name-set file: one line per class of the test set, synonyms separated by ", " (SCLIP's cls_*.txt
    # format); each synonym is a query word and the class takes their max probability. "" = the class names.
    t.NAME_SET = ""


def training_free_config_problems(cfg: CN, training: bool) -> List[str]:
    """What is wrong with MODEL.TRAINING_FREE (for ``validate_config``), each message naming its key."""
    t, problems = cfg.MODEL.TRAINING_FREE, []
    if float(t.LOGIT_SCALE) < 0:
        problems.append(f"MODEL.TRAINING_FREE.LOGIT_SCALE is {t.LOGIT_SCALE}; it must be > 0 (0 = CLIP's own)")
    if not 0.0 <= float(t.PROB_THRESHOLD) <= 1.0:
        problems.append(f"MODEL.TRAINING_FREE.PROB_THRESHOLD is {t.PROB_THRESHOLD}; it must be in [0, 1]")
    if not 0.0 <= float(t.AREA_THRESHOLD) < 1.0:
        problems.append(f"MODEL.TRAINING_FREE.AREA_THRESHOLD is {t.AREA_THRESHOLD}; it must be in [0, 1)")
    return problems
