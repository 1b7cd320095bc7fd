"""MODEL.CLEARCLIP: ClearCLIP's keys (MODEL.META_ARCHITECTURE "ClearCLIP", training-free; Lan et al., "ClearCLIP:
Decomposing CLIP Representations for Dense Vision-Language Inference", ECCV 2024).

The three switches are the paper's three modifications of the last block (its ablation); defaults = ClearCLIP.
"""
from typing import List

from detectron2.config import CfgNode as CN

__all__ = ["CLEARCLIP_ATTENTIONS", "add_clearclip_config", "clearclip_config_problems"]

CLEARCLIP_ATTENTIONS = ("qq", "kk", "vv", "qk")


def add_clearclip_config(cfg: CN) -> None:
    """Add MODEL.CLEARCLIP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.CLEARCLIP = CN()
    c.ATTENTION = "qq"  # last block's self-attention softmax(s a b^T): "qq" (ClearCLIP), "kk", "vv", "qk" (CLIP's own)
    c.RESIDUAL = False  # keep the last block's residual connection (ClearCLIP: removed)
    c.FFN = False  # keep the last block's feed-forward network (ClearCLIP: removed)


def clearclip_config_problems(cfg: CN, training: bool) -> List[str]:
    """What is wrong with MODEL.CLEARCLIP (for ``validate_config``), each message naming its key."""
    a = cfg.MODEL.CLEARCLIP.ATTENTION
    return [] if a in CLEARCLIP_ATTENTIONS else [f"MODEL.CLEARCLIP.ATTENTION is '{a}'; use one of {list(CLEARCLIP_ATTENTIONS)}"]
