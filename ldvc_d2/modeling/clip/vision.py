"""Prompted CLIP image encoder: deep visual prompt tuning (LDVC §3.2, VLPT, visual branch).

Every layer i sees the sequence ``e(i) = [e_p(i); e_c(i); e_g(i)]`` (prompts, patch tokens, [CLS]);
the prompt outputs of layer i-1 are discarded and replaced by layer i's own learnable prompts (deep
prompting as in VPT). Attention in CLIP's image encoder has no mask, so the order of the three parts
does not change any output; prompts are placed first. CLIP's weights are frozen.

ZegCLIP's variant of the same deep prompts (its ``VPTCLIPVisionTransformer``, the baseline of LDVC's
Tables 4 and 7) adds two trainable pieces, both off by default here: every layer's prompts pass
through one shared ``Linear(width, width)`` and dropout before entering the layer
(``prompt_projection``), and the last layer's tokens pass through a LayerNorm (eps 1e-6) before
CLIP's ``ln_post`` (``final_norm``).

CLIP surgery (SEED_SYSTEMS §1.1): ``forward(images, hooks=[BlockHook, ...])`` lets a block expose the
q/k/v of its [CLS] and patch tokens (``BlockHook.tap``, a side output) or run with a replaced attention
(``BlockHook.attn_fn``). Prompt tokens are never part of a tap (q/k/v are per-token, so the prompts do
not change the [CLS]/patch q/k/v) and are left out of a block whose attention is replaced: that block
runs on [CLS] + patches only, because the replacements (CLIPtrase, SCLIP, DeOP) are defined over the
N = 1 + h·w image tokens and would otherwise mix prompts into their self-correlations. With
``hooks=None`` the plain loop below runs unchanged.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from .surgery import BlockHook, block_qkv, check_block, run_block_with_attention

__all__ = ["POS_INTERPOLATIONS", "PromptedVisionEncoder", "run_block"]


POS_INTERPOLATIONS = ("bilinear", "bicubic", "bicubic_size")  # see PromptedVisionEncoder._resized_positions


def run_block(block: nn.Module, x: torch.Tensor, batch_first: bool, attn_mask=None) -> torch.Tensor:
    """Run one open_clip residual block on a batch-first ``B×L×width`` tensor."""
    if batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


class PromptedVisionEncoder(nn.Module):
    """An open_clip ``VisionTransformer`` with deep visual prompts.

    Args:
        visual: open_clip ViT image tower (class-token pooling, no attentional pooler). Frozen here.
        num_prompts: prompt tokens per layer (the paper: 40 for VOC, 100 for COCO-Stuff; 0 = none).
        intermediate_layers: 0-based indices of the transformer blocks whose (raw, width-dim) patch
            tokens are returned as the intermediate features ``V_j``.
        prompt_projection / prompt_dropout: ZegCLIP's shared prompt projection (Linear, Kaiming-normal
            fan-out init as VPT) and the dropout after it (needs ``num_prompts`` > 0).
        final_norm: ZegCLIP's trainable LayerNorm on the last layer's tokens before ``ln_post``.
        pos_interpolation: how the positional grid is resized to other inputs, "bilinear" or
            "bicubic" (:meth:`positional_embedding`).
    """

    def __init__(
        self,
        visual: VisionTransformer,
        *,
        num_prompts: int,
        intermediate_layers: Sequence[int],
        prompt_projection: bool = False,
        prompt_dropout: float = 0.0,
        final_norm: bool = False,
        pos_interpolation: str = "bilinear",
    ):
        super().__init__()
        if pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError("Positional-embedding interpolation (MODEL.CLIP.POS_INTERPOLATION) must be one of "
                             f"{list(POS_INTERPOLATIONS)}, got '{pos_interpolation}'.")
        self.pos_interpolation = pos_interpolation
        if not isinstance(visual, VisionTransformer):
            raise NotImplementedError(
                f"PromptedVisionEncoder needs an open_clip VisionTransformer, got {type(visual).__name__}"
                " (ResNet and timm image towers are not supported; choose a ViT MODEL.CLIP.MODEL)."
            )
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            raise NotImplementedError(
                "PromptedVisionEncoder supports ViTs that pool the [CLS] token after ln_post "
                f"(pool_type='tok'); this model uses pool_type='{visual.pool_type}', "
                f"attn_pool={visual.attn_pool is not None}."
            )
        self.visual = visual
        self.num_layers = len(visual.transformer.resblocks)
        self.width = visual.conv1.out_channels
        self.patch_size = visual.conv1.kernel_size[0]
        self.output_dim = visual.proj.shape[1]
        bad = [i for i in intermediate_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(
                f"MODEL.LDVC.INTERMEDIATE_LAYERS: layers {bad} do not exist; the image encoder has "
                f"{self.num_layers} blocks (valid indices 0..{self.num_layers - 1})."
            )
        self.intermediate_layers = list(intermediate_layers)
        self.num_prompts = num_prompts
        if num_prompts > 0:
            # VPT's Xavier-uniform bound for a patch-sized token: sqrt(6 / (3*p*p + width)).
            bound = math.sqrt(6.0 / float(3 * self.patch_size**2 + self.width))
            self.prompts = nn.Parameter(torch.empty(self.num_layers, num_prompts, self.width))
            nn.init.uniform_(self.prompts, -bound, bound)
        else:
            self.register_parameter("prompts", None)
        if prompt_projection and num_prompts <= 0:
            raise ValueError("MODEL.CLIP.VISUAL_PROMPT_PROJECTION needs MODEL.CLIP.VISUAL_PROMPTS > 0.")
        self.prompt_proj = nn.Linear(self.width, self.width) if prompt_projection else None
        if self.prompt_proj is not None:
            nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        self.prompt_dropout = nn.Dropout(prompt_dropout) if prompt_projection else None
        self.prompt_norm = nn.LayerNorm(self.width, eps=1e-6) if final_norm else None

    def layer_prompts(self, i: int, dtype: torch.dtype) -> torch.Tensor:
        """num_prompts×width prompts entering block ``i`` (projected and dropped out in ZegCLIP's variant)."""
        p = self.prompts[i]
        if self.prompt_proj is not None:
            p = self.prompt_dropout(self.prompt_proj(p))
        return p.to(dtype)

    def positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """CLIP's positional embedding with its grid part resized to ``h×w``: (1+h*w)×width.

        "bilinear" (LDVC/ZegCLIP: to the exact size), "bicubic" as CLIPtrase's official code
        (``clip_utils/model.py:291-309``, DINO's trick: scale factors (h+0.1)/gh, (w+0.1)/gw) or
        "bicubic_size" (bicubic to the exact size, as DeOP's released CLIP code).
        """
        h, w = int(h), int(w)  # plain ints also while fvcore traces the model
        pos = self.visual.positional_embedding
        gh, gw = self.visual.grid_size
        if (h, w) == (gh, gw):
            return pos
        grid = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        if self.pos_interpolation == "bicubic":
            grid = F.interpolate(grid, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic",
                                 align_corners=False)
        else:
            mode = "bicubic" if self.pos_interpolation == "bicubic_size" else "bilinear"
            grid = F.interpolate(grid, size=(h, w), mode=mode, align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)

    def _group_hooks(self, hooks: Sequence[BlockHook]) -> Dict[int, List[BlockHook]]:
        """Hooks by non-negative layer index; checks indices, block types, names and one attn_fn per block."""
        grouped: Dict[int, List[BlockHook]] = {}
        names = set()
        for hook in hooks:
            if not -self.num_layers <= hook.layer < self.num_layers:
                raise ValueError(
                    f"BlockHook layer {hook.layer} does not exist; the image encoder has {self.num_layers} "
                    f"blocks (valid: -{self.num_layers}..{self.num_layers - 1})."
                )
            i = hook.layer % self.num_layers
            check_block(self.visual.transformer.resblocks[i], f"{type(self.visual).__name__} block {i}")
            if hook.tap is not None:
                if hook.name in names or hook.name in ("dense", "global", "intermediate", "tokens"):
                    raise ValueError(f"BlockHook name '{hook.name}' is used twice or clashes with an output key.")
                names.add(hook.name)
            grouped.setdefault(i, []).append(hook)
        for i, group in grouped.items():
            if sum(h.attn_fn is not None for h in group) > 1:
                raise ValueError(f"Two BlockHooks replace the attention of block {i}; give at most one attn_fn.")
        return grouped

    def _hooked_block(self, i: int, x: torch.Tensor, hooks: List[BlockHook], extras: Dict[str, torch.Tensor],
                      batch_first: bool) -> torch.Tensor:
        """Block ``i`` on [CLS]+patch tokens ``x`` (B×(1+hw)×width) with its hooks applied."""
        block = self.visual.transformer.resblocks[i]
        taps = [h for h in hooks if h.tap is not None]
        replace = [h for h in hooks if h.attn_fn is not None]
        if replace:  # prompts are left out of a replaced block; taps reuse the block's own q/k/v

            def attn_fn(q, k, v):
                for h in taps:
                    extras[h.name] = h.tap(q, k, v)
                return replace[0].attn_fn(q, k, v)

            return run_block_with_attention(block, x, attn_fn, residual=replace[0].residual, ffn=replace[0].ffn)
        q, k, v = block_qkv(block, x)
        for h in taps:
            extras[h.name] = h.tap(q, k, v)
        return self._prompted_block(i, x, batch_first)

    def _prompted_block(self, i: int, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
        """Block ``i`` as VPT-deep runs it: layer i's prompts prepended, their outputs dropped."""
        n = self.num_prompts
        if n:
            x = torch.cat([self.layer_prompts(i, x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = run_block(self.visual.transformer.resblocks[i], x, batch_first)
        return x[:, n:] if n else x

    def forward(
        self, images: torch.Tensor, hooks: Optional[Sequence[BlockHook]] = None, return_tokens: bool = False,
        additive_prompts: Optional[nn.Module] = None,
    ) -> Dict[str, object]:
        """images: normalised B×3×H×W (H, W multiples of the patch size).

        Returns ``dense`` B×d×h×w and ``global`` B×d (both L2-normalised, d = CLIP embedding width),
        and ``intermediate``: list of B×width×h×w raw tokens of ``intermediate_layers``. With ``hooks``
        (see :class:`~ldvc_d2.modeling.clip.surgery.BlockHook`) every output reflects the modified blocks
        and each tap's result is added under its name. ``return_tokens`` adds ``tokens``: the final
        B×(1+h·w)×d [CLS]+patch tokens after ln_post and proj, not normalised. ``additive_prompts``
        (DeOP's :class:`~ldvc_d2.modeling.clip.additive_prompts.AdditiveVisualPrompts`) adds its P_0 before
        ln_pre and its P_b to the [CLS]+patch tokens entering block b.
        """
        grouped = self._group_hooks(hooks) if hooks else {}
        extras: Dict[str, torch.Tensor] = {}
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(h, w).to(x.dtype)
        added = additive_prompts.layers if additive_prompts is not None else []
        if 0 in added:
            x = x + additive_prompts(0, h, w).to(x.dtype)
        x = v.ln_pre(x)

        batch_first = getattr(v.transformer, "batch_first", True)
        taps: Dict[int, torch.Tensor] = {}
        for i in range(self.num_layers):
            if i and i in added:
                x = x + additive_prompts(i, h, w).to(x.dtype)
            if i in grouped:
                x = self._hooked_block(i, x, grouped[i], extras, batch_first)
            else:
                x = self._prompted_block(i, x, batch_first)
            if i in self.intermediate_layers:
                taps[i] = x[:, 1:].transpose(1, 2).reshape(b, self.width, h, w)

        if self.prompt_norm is not None:
            x = self.prompt_norm(x)
        x = v.ln_post(x) @ v.proj
        global_feat = F.normalize(x[:, 0], dim=-1)
        dense = F.normalize(x[:, 1:], dim=-1).transpose(1, 2).reshape(b, self.output_dim, h, w)
        intermediate = [taps[i] for i in self.intermediate_layers]
        out = {"dense": dense, "global": global_feat, "intermediate": intermediate, **extras}
        if return_tokens:
            out["tokens"] = x
        return out
