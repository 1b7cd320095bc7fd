"""DeOP stage 1: learning the CoOp text prompts by classifying ground-truth region crops (SEED_SYSTEMS D5).

DeOP (seed 004, §3.4) uses "learnable prompts as CoOp"; the released recipe learns them first, offline
(SimBaseline's proposal-classification stage; D5: SGD lr 0.02, wd 5e-4, cosine, 100 warm-up iterations, 16k
iterations, batch 32), then fine-tunes them in stage 3. Here each seen class present in a training crop is
one region: its mask's bounding box is cropped from the image, the pixels outside the mask are set to the
pixel mean (``MASK_FILL "mean"``; "none" keeps the box), and the crop is resized to CLIP's input size (224 for
ViT-B/16). Frozen CLIP embeds the crop ([CLS] after ``ln_post`` and the projection, L2-normalised, D4), and
the region's class is predicted by ℓ = s · f · Tᵀ over the C seen classes, T the CoOp embeddings
(:class:`~ldvc_d2.modeling.clip.coop.CoOpTextEncoder`, the only trainable tensor), s = LOGIT_SCALE, with
cross-entropy. Batch: IMS_PER_BATCH images, every region of each.

Stage 3 reads the checkpoint's one key ending in ``ctx`` (``text_encoder.ctx``; MODEL.DEOP.TEXT_PROMPT_WEIGHTS).

``--eval-only`` (a diagnostic of the prompts, not a DeOP figure): every pixel is classified from CLIP's final
patch tokens (after ``ln_post`` and the projection, L2-normalised) against the prompts, softmax over classes,
upsampled from the patch grid.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from .config import MASK_FILLS
from ..clip import PromptedVisionEncoder, build_clip_model
from ..clip.coop import CoOpTextEncoder
from ..segmentor import ZeroShotSegmentor
from ..segmentor_config import segmentor_config

__all__ = ["DeOPPromptLearner", "region_crops"]


def region_crops(images: torch.Tensor, targets: torch.Tensor, *, ignore_label: int, size: int,
                 mask_fill: str = "mean", min_pixels: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised B×3×H×W images and B×H×W class indices -> (R×3×size×size crops, R class labels).

    One region per (image, class present with at least ``min_pixels`` pixels), in image then class order;
    the crop is the mask's bounding box, outside-mask pixels zero (the normalised pixel mean) when
    ``mask_fill == "mean"``, resized bilinearly to size×size.
    """
    crops, labels = [], []
    for image, target in zip(images, targets):
        for c in torch.unique(target).tolist():
            mask = target == c
            if c == ignore_label or int(mask.sum()) < min_pixels:
                continue
            ys, xs = torch.nonzero(mask, as_tuple=True)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            crop = image[:, y0:y1, x0:x1]
            if mask_fill == "mean":
                crop = crop * mask[y0:y1, x0:x1].to(crop.dtype)
            crops.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0])
            labels.append(c)
    if not crops:
        return images.new_zeros((0, images.shape[1], size, size)), torch.zeros(0, dtype=torch.long, device=images.device)
    return torch.stack(crops), torch.tensor(labels, dtype=torch.long, device=images.device)


@META_ARCH_REGISTRY.register()
class DeOPPromptLearner(ZeroShotSegmentor):
    """Stage 1 of DeOP: CoOp prompts learned on GT region crops of the seen classes, CLIP frozen."""

    @configurable
    def __init__(self, *, text_encoder: CoOpTextEncoder, image_encoder: PromptedVisionEncoder,
                 mask_fill: str = "mean", min_region_pixels: int = 1, logit_scale: float = 100.0, **kwargs):
        """
        Args:
            text_encoder: CoOp prompts over CLIP's frozen text tower (its ``ctx`` is what trains).
            image_encoder: CLIP's frozen image tower without prompts.
            mask_fill / min_region_pixels: see :func:`region_crops`.
            logit_scale: s in ℓ = s · f · Tᵀ.
            kwargs: :class:`ZeroShotSegmentor`'s.
        """
        super().__init__(pad_multiple=image_encoder.patch_size, **kwargs)
        if mask_fill not in MASK_FILLS:
            raise ValueError(f"MODEL.DEOP.PROMPT_LEARNING.MASK_FILL must be one of {list(MASK_FILLS)}, got '{mask_fill}'.")
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.mask_fill = mask_fill
        self.min_region_pixels = min_region_pixels
        self.logit_scale = logit_scale
        self.region_size = int(image_encoder.visual.image_size[0])  # CLIP's native input (224 for ViT-B/16)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        c, d, s = cfg.MODEL.CLIP, cfg.MODEL.DEOP, cfg.MODEL.DEOP.PROMPT_LEARNING
        clip, tokenizer = build_clip_model(c.MODEL, c.PRETRAINED, cache_dir=c.CACHE_DIR or None)
        return {
            **segmentor_config(cfg),
            "calibration": 0.0,  # DeOP calibrates no seen scores (D9); neither does this diagnostic
            "text_encoder": CoOpTextEncoder(clip, tokenizer, n_ctx=d.TEXT_CTX, init_std=d.TEXT_CTX_INIT_STD),
            "image_encoder": PromptedVisionEncoder(clip.visual, num_prompts=0, intermediate_layers=[],
                                                   pos_interpolation=c.POS_INTERPOLATION),
            "mask_fill": s.MASK_FILL,
            "min_region_pixels": s.MIN_REGION_PIXELS,
            "logit_scale": s.LOGIT_SCALE,
        }

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        return (f"{super().describe_protocol(cfg)}, per-pixel CLIP patch tokens against the learned CoOp prompts "
                "(a diagnostic of stage 1)")

    def encode_text(self, class_names: List[str]) -> torch.Tensor:
        return self.text_encoder(class_names)

    def batch_window_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """B windows -> B×C×H×W class probabilities of CLIP's dense tokens (see the module docstring)."""
        dense = self.image_encoder(images)["dense"]
        logits = self.logit_scale * torch.einsum("bdhw,cd->bchw", dense, text.to(dense.dtype))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False).softmax(1)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, targets = self.training_batch(batched_inputs)
        crops, labels = region_crops(images, targets, ignore_label=self.ignore_label, size=self.region_size,
                                     mask_fill=self.mask_fill, min_pixels=self.min_region_pixels)
        text = self.text_features(self.train_class_names)
        if not len(labels):  # no seen region in the batch: a zero loss that still reaches the prompts
            return {"loss_region_ce": text.sum() * 0.0}
        with torch.no_grad():
            features = self.image_encoder(crops)["global"]
        logits = self.logit_scale * features @ text.t()
        return {"loss_region_ce": F.cross_entropy(logits, labels)}

    def train(self, mode: bool = True):
        """CLIP stays in eval mode (frozen); only the prompts train."""
        super().train(mode)
        self.image_encoder.eval()
        self.text_encoder.eval()
        return self
