"""PromptedCLIPBackbone: the frozen CLIP image and text encoders with VLPT prompts (LDVC §3.2).

Public API (used by the meta-architecture, configs and other projects):

* ``forward(images)`` — images: normalised B×3×H×W. Returns a dict with
  ``"dense"`` V_l: B×d×h×w, L2-normalised per pixel (final patch tokens -> ln_post -> proj);
  ``"global"`` V_g: B×d, L2-normalised ([CLS] -> ln_post -> proj);
  ``"intermediate"`` {V_j}: list of B×width×h×w tokens of MODEL.LDVC.INTERMEDIATE_LAYERS, scaled by
  MODEL.LDVC.INTERMEDIATE_NORM (eq. 4 adds them, through a Conv1x1, to the L2-normalised V_l; the
  paper does not say how they are scaled): "none" = the raw residual stream, "ln_post" = CLIP's
  frozen final LayerNorm (without proj), "learnable" = one trainable LayerNorm per tap, "l2" = each
  token L2-normalised, the same unit scale as V_l (a LayerNorm leaves a norm of about sqrt(width)).
  h = H / patch, w = W / patch; d is CLIP's joint embedding width (512 for ViT-B/16).
* ``encode_text(class_names)`` -> C×d class embeddings T, L2-normalised. With frozen text
  (TEXT_PROMPTS 0) and MODEL.CLIP.TEXT_TEMPLATES, T is the template ensemble (ZegCLIP's COCO-Stuff text).

Only the prompts (and the "learnable" V_j norms) train; ``train()`` keeps CLIP itself in eval mode.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from .clip.loading import build_clip_model
from .clip.severance import severance_hooks
from .clip.text import PromptedTextEncoder, RandomClassEmbedding, TemplateEnsembleTextEncoder
from .clip.vision import PromptedVisionEncoder

__all__ = ["PromptedCLIPBackbone", "default_intermediate_layers"]


def default_intermediate_layers(num_layers: int, num_blocks: int) -> List[int]:
    """Evenly spaced blocks from the middle of the encoder to its last block (the paper is silent).

    ViT-B/16 (12 blocks) with 2 decoder blocks gives [6, 11]; block k of the decoder gets entry k.
    """
    return [int(round(x)) for x in np.linspace(num_layers // 2, num_layers - 1, num_blocks)]


@BACKBONE_REGISTRY.register()
class PromptedCLIPBackbone(Backbone):
    @configurable
    def __init__(
        self,
        *,
        clip_model: str,
        clip_pretrained: str,
        clip_cache_dir: str = "",
        visual_prompts: int,
        text_prompts: int,
        text_prompt_init: str = "template",
        text_prompt_template: str = "this is a photo of a {}.",
        intermediate_layers: Sequence[int] = (),
        num_intermediate: int = 0,
        class_embeddings: str = "text",
        visual_prompt_projection: bool = False,
        visual_prompt_dropout: float = 0.0,
        visual_final_norm: bool = False,
        intermediate_norm: str = "none",
        text_templates: Sequence[str] = (),
        patch_severance_layers: Sequence[int] = (),
        patch_severance_alpha: Sequence[float] = (1.0,),
        pos_interpolation: str = "bilinear",
    ):
        """
        Args:
            clip_model / clip_pretrained / clip_cache_dir: see :func:`build_clip_model`.
            visual_prompts / text_prompts: deep prompt tokens per layer (0 disables a branch).
            intermediate_layers: 0-based image-encoder blocks for V_j; empty = auto with
                ``num_intermediate`` entries (:func:`default_intermediate_layers`).
            class_embeddings: "text" (CLIP's prompted text encoder) or "random" (the "no language"
                control, :class:`RandomClassEmbedding`).
            visual_prompt_projection / visual_prompt_dropout / visual_final_norm: ZegCLIP's prompt
                variant (see :class:`PromptedVisionEncoder`); off for LDVC.
            intermediate_norm: "none", "ln_post", "learnable" or "l2" (see the module docstring).
            text_templates: templates averaged into frozen class embeddings
                (:class:`TemplateEnsembleTextEncoder`; needs ``text_prompts`` 0); empty = ``text_prompt_template``.
            patch_severance_layers / patch_severance_alpha: DeOP's pure GPS (eq. 2) in these blocks, α per
                block or one for all (:mod:`~ldvc_d2.modeling.clip.severance`); empty = CLIP's own blocks.
            pos_interpolation: how CLIP's positional grid is resized to other inputs (:class:`PromptedVisionEncoder`).
        """
        super().__init__()
        model, tokenizer = build_clip_model(clip_model, clip_pretrained, cache_dir=clip_cache_dir or None)
        num_layers = len(model.visual.transformer.resblocks)
        layers = list(intermediate_layers) or default_intermediate_layers(num_layers, num_intermediate)
        self.visual = PromptedVisionEncoder(
            model.visual, num_prompts=visual_prompts, intermediate_layers=layers,
            prompt_projection=visual_prompt_projection, prompt_dropout=visual_prompt_dropout,
            final_norm=visual_final_norm, pos_interpolation=pos_interpolation,
        )
        if intermediate_norm not in ("none", "ln_post", "learnable", "l2"):
            raise ValueError(
                "MODEL.LDVC.INTERMEDIATE_NORM must be 'none', 'ln_post', 'learnable' or 'l2', "
                f"got '{intermediate_norm}'."
            )
        self.intermediate_norm = intermediate_norm
        self.intermediate_norms = (
            nn.ModuleList(nn.LayerNorm(self.visual.width) for _ in layers) if intermediate_norm == "learnable" else None
        )
        if text_templates and (class_embeddings != "text" or text_prompts):
            raise ValueError(
                "MODEL.CLIP.TEXT_TEMPLATES averages frozen text embeddings; it needs MODEL.CLIP.TEXT_PROMPTS 0 and "
                f"CLASS_EMBEDDINGS 'text' (got {text_prompts} prompts, '{class_embeddings}'). Use [] otherwise."
            )
        if class_embeddings == "text" and text_templates:
            self.text = TemplateEnsembleTextEncoder(model, tokenizer, templates=list(text_templates))
        elif class_embeddings == "text":
            self.text = PromptedTextEncoder(
                model, tokenizer, num_prompts=text_prompts, init=text_prompt_init, template=text_prompt_template
            )
        elif class_embeddings == "random":
            self.text = RandomClassEmbedding(self.visual.output_dim)
        else:
            raise ValueError(f"MODEL.SEGMENTOR.CLASS_EMBEDDINGS must be 'text' or 'random', got '{class_embeddings}'.")
        self.embed_dim = self.visual.output_dim
        self.severance = severance_hooks(patch_severance_layers, patch_severance_alpha) if patch_severance_layers else []

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        c = cfg.MODEL.CLIP
        args = {
            "clip_model": c.MODEL,
            "clip_pretrained": c.PRETRAINED,
            "clip_cache_dir": c.CACHE_DIR,
            "visual_prompts": c.VISUAL_PROMPTS,
            "text_prompts": c.TEXT_PROMPTS,
            "text_prompt_init": c.TEXT_PROMPT_INIT,
            "text_prompt_template": c.TEXT_TEMPLATE,
            "class_embeddings": cfg.MODEL.SEGMENTOR.CLASS_EMBEDDINGS,
            "visual_prompt_projection": c.VISUAL_PROMPT_PROJECTION,
            "visual_prompt_dropout": c.VISUAL_PROMPT_DROPOUT,
            "visual_final_norm": c.VISUAL_FINAL_NORM,
            "text_templates": list(c.TEXT_TEMPLATES),
            "patch_severance_layers": list(c.PATCH_SEVERANCE_LAYERS),
            "patch_severance_alpha": list(c.PATCH_SEVERANCE_ALPHA),
            "pos_interpolation": c.POS_INTERPOLATION,
        }
        if cfg.MODEL.SEM_SEG_HEAD.NAME != "LCTDHead":
            return args  # V_j feed LCTD's blocks only (ZegCLIP's head does not use them: no taps, no V_j norms)
        ldvc = cfg.MODEL.LDVC
        if ldvc.INTERMEDIATE_LAYERS and len(ldvc.INTERMEDIATE_LAYERS) != ldvc.LCTD.NUM_BLOCKS:
            raise ValueError(
                f"MODEL.LDVC.INTERMEDIATE_LAYERS {list(ldvc.INTERMEDIATE_LAYERS)} must name one layer per LCTD block "
                f"(MODEL.LDVC.LCTD.NUM_BLOCKS={ldvc.LCTD.NUM_BLOCKS}), or be [] for the default."
            )
        return {**args, "intermediate_layers": ldvc.INTERMEDIATE_LAYERS, "num_intermediate": ldvc.LCTD.NUM_BLOCKS,
                "intermediate_norm": ldvc.INTERMEDIATE_NORM}

    def scale_intermediate(self, taps: List[torch.Tensor]) -> List[torch.Tensor]:
        """B×width×h×w raw tokens -> the same shape after MODEL.LDVC.INTERMEDIATE_NORM (over the width)."""
        if self.intermediate_norm == "none":
            return taps
        if self.intermediate_norm == "l2":
            return [F.normalize(t, dim=1) for t in taps]
        norms = self.intermediate_norms
        if norms is None:  # "ln_post": CLIP's own (frozen) final LayerNorm on every tap
            norms = [self.visual.visual.ln_post] * len(taps)
        return [norm(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for norm, t in zip(norms, taps)]

    def forward(self, images: torch.Tensor) -> Dict[str, object]:
        out = self.visual(images, hooks=self.severance or None)
        out["intermediate"] = self.scale_intermediate(out["intermediate"])
        return out

    def encode_text(self, class_names: List[str]) -> torch.Tensor:
        return self.text(class_names)

    def train(self, mode: bool = True):
        """Prompts follow ``mode``; the frozen CLIP modules always stay in eval mode."""
        super().train(mode)
        self.visual.visual.eval()
        for module in self.text.children():  # frozen CLIP text modules (no-op for the random control)
            module.eval()
        return self

    @property
    def size_divisibility(self) -> int:
        return self.visual.patch_size

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            "dense": ShapeSpec(channels=self.embed_dim, stride=self.visual.patch_size),
            "global": ShapeSpec(channels=self.embed_dim),
            "intermediate": ShapeSpec(channels=self.visual.width, stride=self.visual.patch_size),
        }
