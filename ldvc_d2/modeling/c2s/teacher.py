"""The frozen CLIP teacher of C2S: global, dense and per-region [CLS] tokens (seed 003 §3.1).

* (C1) ``encode(images)``: dense tokens C_d (B×d×h×w, last-block patch tokens → ln_post → proj,
  L2-normalised; the crop's own pass) and the global token C_g (B×d) of the image resized to
  ``global_size`` (0: the [CLS] of the same pass).
* (C4) ``region_tokens(images, masks, image_index)``: "class-specific sub-images" — pixels outside the
  region set to the mean pixel (0 after normalisation), then the region's bounding box cropped and
  resized to ``crop_size``² (SimBaseline/zsseg's recipe; the paper's is unstated); all regions of the
  batch go through CLIP in chunks → R×d local [CLS] tokens.

The teacher only exists while training (:class:`~.meta_arch.C2S` builds it on the first training
step and keeps it out of the state dict), so an evaluated or exported model has no CLIP image tower.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ..clip import PromptedVisionEncoder, build_clip_model

__all__ = ["CLIPTeacher", "mask_boxes"]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """R×H×W boolean masks (each non-empty) -> R×4 boxes (x1, y1, x2, y2) in pixel-edge coordinates."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    h, w = masks.shape[-2:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    return torch.stack([x1, y1, x2, y2], dim=1).float()


class CLIPTeacher(nn.Module):
    """Frozen open_clip ViT image tower (any ``MODEL.CLIP.MODEL``) answering C1 and C4."""

    def __init__(self, clip_model: str, clip_pretrained: str, clip_cache_dir: str = "", *, global_size: int = 224,
                 crop_size: int = 224, chunk: int = 64):
        super().__init__()
        model, _ = build_clip_model(clip_model, clip_pretrained, cache_dir=clip_cache_dir or None)
        self.visual = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[])
        self.global_size, self.crop_size, self.chunk = global_size, crop_size, chunk
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        p = self.visual.patch_size
        h, w = images.shape[-2:]
        return F.pad(images, (0, -w % p, 0, -h % p))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Normalised B×3×H×W -> {"dense": B×d×ceil(H/p)×ceil(W/p), "global": B×d}, L2-normalised."""
        out = self.visual(self._pad(images))
        cls = out["global"]
        if self.global_size:
            small = F.interpolate(images, size=(self.global_size,) * 2, mode="bicubic", align_corners=False,
                                  antialias=True)  # as CLIP's own (antialiased bicubic) resize
            cls = self.visual(self._pad(small))["global"]
        return {"dense": out["dense"], "global": cls}

    @torch.no_grad()
    def region_tokens(self, images: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """images: normalised B×3×H×W; masks: R×H×W boolean (non-empty); image_index: R (their image).
        Returns the R×d L2-normalised [CLS] tokens of the masked region crops (C4). Each region is masked
        at full resolution before its box is resized, so nothing outside the mask reaches its token."""
        tokens = []
        for rows in torch.arange(len(masks), device=masks.device).split(self.chunk):
            m = masks[rows]
            masked = images[image_index[rows]] * m[:, None]  # outside the region: the mean pixel (0)
            index = torch.arange(len(rows), device=masks.device, dtype=images.dtype)[:, None]
            boxes = torch.cat([index, mask_boxes(m).to(images.dtype)], dim=1)
            crops = roi_align(masked, boxes, (self.crop_size, self.crop_size), aligned=True)
            tokens.append(self.visual(self._pad(crops))["global"])
        return torch.cat(tokens) if tokens else images.new_zeros(0, self.visual.output_dim)
