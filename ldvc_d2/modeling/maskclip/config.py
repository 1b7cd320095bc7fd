"""MODEL.MASKCLIP: MaskCLIP's keys (MODEL.META_ARCHITECTURE "MaskCLIP", training-free; Zhou et al., ECCV 2022).

The harness settings (logit scale, thresholds, background words) are MODEL.TRAINING_FREE's, the tower MODEL.CLIP's.
"""
from typing import List

from detectron2.config import CfgNode as CN

__all__ = ["MASKCLIP_VARIANTS", "add_maskclip_config", "maskclip_config_problems"]

MASKCLIP_VARIANTS = ("released", "harness")


def add_maskclip_config(cfg: CN) -> None:
    """Add MODEL.MASKCLIP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.MASKCLIP = CN()
    # Last block: "released" = the value embeddings through out_proj with the block's residual and feed-forward
    # (MaskCLIP's released ViT backbone); "harness" = out_proj(v) alone, no residual, no feed-forward (the
    # re-implementation whose numbers the SCLIP / ClearCLIP / NACLIP tables report, ClearCLIP model_type 'MaskCLIP')
    c.VARIANT = "harness"


def maskclip_config_problems(cfg: CN, training: bool) -> List[str]:
    """What is wrong with MODEL.MASKCLIP (for ``validate_config``), each message naming its key."""
    v = cfg.MODEL.MASKCLIP.VARIANT
    return [] if v in MASKCLIP_VARIANTS else [f"MODEL.MASKCLIP.VARIANT is '{v}'; use one of {list(MASKCLIP_VARIANTS)}"]
