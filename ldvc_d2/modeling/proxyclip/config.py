"""MODEL.PROXYCLIP: ProxyCLIP's keys (MODEL.META_ARCHITECTURE "ProxyCLIP", training-free; Lan et al., "ProxyCLIP:
Proxy Attention Improves CLIP for Open-Vocabulary Segmentation", ECCV 2024).
"""
from typing import List

from detectron2.config import CfgNode as CN

__all__ = ["add_proxyclip_config", "proxyclip_config_problems"]


def add_proxyclip_config(cfg: CN) -> None:
    """Add MODEL.PROXYCLIP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.PROXYCLIP = CN()
    # The vision foundation model giving the proxy attention: a timm ViT architecture (the paper's default DINO
    # ViT-B/8 = "vit_base_patch8_224"), or "clip_keys" = the CLIP tower's own last-block keys (ours: an offline
    # stand-in for the shapes benchmark, not the paper's method)
    c.VFM_ARCH = "vit_base_patch8_224"
    # Its weights: a local .pth/.pkl/.safetensors file (read without running code), or a timm hub name such as
    # "timm/vit_base_patch8_224.dino" (downloaded by timm); "" is refused for a timm VFM_ARCH (never random weights)
    c.VFM_WEIGHTS = "timm/vit_base_patch8_224.dino"
    c.BETA = 1.2  # S~ = GAMMA * (S - BETA * mean(S)) (released code beta 1.2)
    c.GAMMA = 3.0  # temperature of the proxy attention (released code gamma 3.0)


def proxyclip_config_problems(cfg: CN, training: bool) -> List[str]:
    """What is wrong with MODEL.PROXYCLIP (for ``validate_config``), each message naming its key."""
    c, problems = cfg.MODEL.PROXYCLIP, []
    if c.VFM_ARCH != "clip_keys" and not c.VFM_WEIGHTS:
        problems.append(f"MODEL.PROXYCLIP.VFM_WEIGHTS is empty for VFM_ARCH '{c.VFM_ARCH}'; name a timm hub model "
                        "(e.g. 'timm/vit_base_patch8_224.dino') or a local weight file: a random VFM is refused")
    if float(c.GAMMA) <= 0:
        problems.append(f"MODEL.PROXYCLIP.GAMMA is {c.GAMMA}; it must be > 0")
    return problems
