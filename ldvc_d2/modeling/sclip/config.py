"""MODEL.SCLIP: SCLIP's keys (MODEL.META_ARCHITECTURE "SCLIP", training-free; Wang et al., "SCLIP: Rethinking
Self-Attention for Dense Vision-Language Inference", ECCV 2024).

The harness settings (logit scale, thresholds, area threshold, background words) are MODEL.TRAINING_FREE's.
"""
from typing import List

from detectron2.config import CfgNode as CN

__all__ = ["add_sclip_config", "sclip_config_problems"]


def add_sclip_config(cfg: CN) -> None:
    """Add MODEL.SCLIP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.SCLIP = CN()
    c.ATTENTION_LAYER = -1  # block whose attention becomes correlative self-attention (released code: the last)


def sclip_config_problems(cfg: CN, training: bool) -> List[str]:
    """What is wrong with MODEL.SCLIP (for ``validate_config``)."""
    return []
