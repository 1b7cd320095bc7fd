"""The vision foundation model (VFM) of ProxyCLIP: a timm ViT whose final patch tokens give the proxy attention.

ProxyCLIP's released code takes ``get_intermediate_layers(x)[0]`` of torch.hub's ``dino_vitb8``: the last block's
tokens after the final norm, patch tokens only. timm's ``forward_features`` returns the same (after ``norm``); the
prefix ([CLS], register) tokens are dropped. The VFM sees the window's pixels normalised with ImageNet statistics.
"""
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint import load_checkpoint_file

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TimmVFM", "build_vfm", "proxy_attention", "resize_heads"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmVFM(nn.Module):
    """A timm ViT: ``forward(pixels)`` with pixels B×3×H×W in 0-255 RGB -> B×C×H'×W' patch features (H' = H / patch)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        tokens = self.model.forward_features((pixels - self.mean) / self.std)
        tokens = tokens[:, getattr(self.model, "num_prefix_tokens", 1):]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def _state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = load_checkpoint_file(path)
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in obj.items()}


def build_vfm(arch: str, weights: str) -> TimmVFM:
    """timm ``arch`` (dynamic image size, no head) with ``weights``: a local file (safe loaders, strict key match)
    or a timm hub name (timm's own safetensors download). An empty ``weights`` is refused."""
    import timm

    if not weights:
        raise ValueError(f"MODEL.PROXYCLIP.VFM_WEIGHTS is empty for VFM_ARCH '{arch}': name a timm hub model or a "
                         "local weight file (a random VFM is refused).")
    if os.path.exists(weights):
        model = timm.create_model(arch, pretrained=False, dynamic_img_size=True, num_classes=0)
        state = {k: v for k, v in _state_dict(weights).items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"MODEL.PROXYCLIP.VFM_WEIGHTS '{weights}' does not fit timm '{arch}': missing "
                             f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}.")
    else:
        name = weights.removeprefix("timm/")
        model = timm.create_model(name, pretrained=True, dynamic_img_size=True, num_classes=0)
    return TimmVFM(model.eval())


def proxy_attention(features: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """ProxyCLIP's proxy attention from VFM features B×C×H'×W' -> B×M×M (M = H'W'), rows summing to 1.

    Ĝ = G/‖G‖ per token; S = ĜᵀĜ; S̃ = γ(S − β·mean(S)) (mean over all M² entries of the image); entries < 0 are
    masked (−inf) before the row softmax. A row masked entirely (β·mean(S) > 1; the released code returns NaN there)
    keeps its diagonal entry (ours: the token attends to itself).
    """
    g = F.normalize(features.flatten(2), dim=1)  # B×C×M
    s = g.transpose(1, 2) @ g
    s = gamma * (s - beta * s.mean(dim=(1, 2), keepdim=True))
    masked = s < 0
    empty = masked.all(dim=-1, keepdim=True)
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    masked = masked & ~(empty & eye)
    return torch.softmax(s.masked_fill(masked, float("-inf")), dim=-1)


def resize_heads(v: torch.Tensor, grid: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """CLIP patch values B×H×(h·w)×d_h on an h×w grid -> B×H×(H'·W')×d_h, bilinear (align_corners=False)."""
    b, heads, _, d = v.shape
    x = v.transpose(-1, -2).reshape(b * heads, d, *grid)
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(b, heads, d, -1).transpose(-1, -2)
