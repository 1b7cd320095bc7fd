"""MODEL.NACLIP: NACLIP's keys (MODEL.META_ARCHITECTURE "NACLIP", training-free; Hajimiri et al., "Pay Attention to
Your Neighbours: Training-Free Open-Vocabulary Semantic Segmentation", WACV 2025).
"""
from typing import List

from detectron2.config import CfgNode as CN

__all__ = ["add_naclip_config", "naclip_config_problems"]


def add_naclip_config(cfg: CN) -> None:
    """Add MODEL.NACLIP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.NACLIP = CN()
    c.GAUSSIAN_STD = 5.0  # sigma of the neighbourhood prior, in patches (released code gaussian_std 5)
    c.ATTENTION = "naclip"  # "naclip" (k-k + prior), "kk" (k-k only), "nonly" (prior only, scaled): released ablations
    c.ARCH = "reduced"  # "reduced": last block without residual and feed-forward (the paper's reduced architecture); "vanilla": both kept


def naclip_config_problems(cfg: CN, training: bool) -> List[str]:
    """What is wrong with MODEL.NACLIP (for ``validate_config``), each message naming its key."""
    c, problems = cfg.MODEL.NACLIP, []
    if c.ATTENTION not in ("naclip", "kk", "nonly"):
        problems.append(f"MODEL.NACLIP.ATTENTION is '{c.ATTENTION}'; use 'naclip', 'kk' or 'nonly'")
    if c.ARCH not in ("reduced", "vanilla"):
        problems.append(f"MODEL.NACLIP.ARCH is '{c.ARCH}'; use 'reduced' or 'vanilla'")
    if c.ATTENTION != "kk" and float(c.GAUSSIAN_STD) <= 0:
        problems.append(f"MODEL.NACLIP.GAUSSIAN_STD is {c.GAUSSIAN_STD}; it must be > 0")
    return problems
