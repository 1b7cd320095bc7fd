"""The ProxyCLIP meta-architecture (Lan et al., ECCV 2024), training-free.

The attention of CLIP's last block comes from a vision foundation model's features (the proxy): with the
VFM's final patch features G on its H'×W' grid, A = softmax(mask(γ(ĜᵀĜ − β·mean))) (:func:`.vfm.proxy_attention`),
shared by every head; CLIP's last-block values v (patches, [CLS] dropped) are bilinearly resized from h×w to H'×W'
(released ``proxyclip_segmentor.py``), and the output F(W_o(A v) + b_o), F = ``ln_post`` then ``proj``, without
residual and feed-forward, gives the dense features on the VFM grid. The VFM sees the same window pixels
normalised with ImageNet statistics. Windows are padded to multiples of both patch sizes.
"""
import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..clip.surgery import BlockHook
from ..training_free import TrainingFreeCLIPSegmentor, training_free_args
from .vfm import build_vfm, proxy_attention, resize_heads

__all__ = ["ProxyCLIP"]


@META_ARCH_REGISTRY.register()
class ProxyCLIP(TrainingFreeCLIPSegmentor):
    """Training-free; built with no MODEL.WEIGHTS. ``vfm`` None = "clip_keys" (the CLIP tower's last-block keys)."""

    @configurable
    def __init__(self, *, vfm: Optional[nn.Module] = None, beta: float = 1.2, gamma: float = 3.0, **kwargs):
        """vfm: a :class:`.vfm.TimmVFM` (or any module mapping 0-255 pixels to B×C×H'×W' with ``patch_size``);
        beta / gamma: MODEL.PROXYCLIP.*; kwargs: :class:`TrainingFreeCLIPSegmentor`'s."""
        super().__init__(**kwargs)
        if vfm is not None:
            self.pad_multiple = math.lcm(self.visual.patch_size, int(vfm.patch_size))
        self.vfm = vfm
        self.beta, self.gamma = float(beta), float(gamma)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        c = cfg.MODEL.PROXYCLIP
        weights = c.VFM_WEIGHTS  # read for every VFM_ARCH (a config naming both must build)
        vfm = None if c.VFM_ARCH == "clip_keys" else build_vfm(c.VFM_ARCH, weights)
        return {**training_free_args(cfg), "vfm": vfm, "beta": c.BETA, "gamma": c.GAMMA}

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        c = cfg.MODEL.PROXYCLIP
        proxy = ("the CLIP tower's own last-block keys (stand-in, not the paper's VFM)" if c.VFM_ARCH == "clip_keys"
                 else f"{c.VFM_ARCH} ('{c.VFM_WEIGHTS}')")
        return f"{super().describe_protocol(cfg)}, proxy attention from {proxy}, beta {c.BETA}, gamma {c.GAMMA}"

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W windows -> B×d×H'×W' L2-normalised features on the VFM grid."""
        p = self.visual.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        taps = {"proxy_v": lambda q, k, v: v[:, :, 1:], "proxy_k": lambda q, k, v: k[:, :, 1:]}
        hooks = [BlockHook(layer=-1, tap=taps["proxy_v"], name="proxy_v")]
        if self.vfm is None:
            hooks.append(BlockHook(layer=-1, tap=taps["proxy_k"], name="proxy_k"))
        out = self.visual(images, hooks=hooks)
        if self.vfm is None:
            k = out["proxy_k"]  # B×H×hw×d_h -> B×(H·d_h)×h×w
            feats = k.permute(0, 1, 3, 2).reshape(k.shape[0], -1, *grid)
        else:
            feats = self.vfm(images * self.pixel_std + self.pixel_mean)
        attn = proxy_attention(feats.float(), self.beta, self.gamma).to(images.dtype)  # B×M×M
        v = resize_heads(out["proxy_v"], grid, feats.shape[-2:])  # B×H×M×d_h
        x = (attn[:, None] @ v).transpose(1, 2).flatten(2)  # B×M×D
        block = self.visual.visual.transformer.resblocks[-1]
        x = F.linear(x, block.attn.out_proj.weight, block.attn.out_proj.bias)
        x = self.visual.visual.ln_post(x) @ self.visual.visual.proj
        return F.normalize(x, dim=-1).transpose(1, 2).reshape(x.shape[0], -1, *feats.shape[-2:])
