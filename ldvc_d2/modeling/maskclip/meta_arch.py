"""The MaskCLIP meta-architecture (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022), training-free.

The paper drops the query and key embeddings of the last attention layer and keeps the value embedding and the
output linear layer (as two 1×1 convolutions): the last block's patch outputs are its value embeddings
through the output projection, then ``ln_post`` and ``proj`` (A = I, :func:`~ldvc_d2.modeling.clip.attention.identity_attention`).
Two forms (MODEL.MASKCLIP.VARIANT): "released" keeps the block's residual and feed-forward around W_o v + b_o (the
released backbone; with bicubic positional resize to the exact size, POS_INTERPOLATION "bicubic_size"); "harness"
drops both, F(W_o v + b_o), as the re-implementation in the later papers' harness (ClearCLIP ``model_type
'MaskCLIP'``), whose benchmark numbers are the ones cited for MaskCLIP. The released code's key smoothing and prompt
denoising are not part of those numbers and are not implemented.
"""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip.attention import identity_attention
from ..clip.surgery import BlockHook
from ..training_free import TrainingFreeCLIPSegmentor, training_free_args

__all__ = ["MaskCLIP"]


@META_ARCH_REGISTRY.register()
class MaskCLIP(TrainingFreeCLIPSegmentor):
    """Training-free; built with no MODEL.WEIGHTS."""

    @configurable
    def __init__(self, *, variant: str = "harness", **kwargs):
        """variant: MODEL.MASKCLIP.VARIANT ("released" or "harness"); kwargs: :class:`TrainingFreeCLIPSegmentor`'s."""
        if variant not in ("released", "harness"):
            raise ValueError(f"MODEL.MASKCLIP.VARIANT must be 'released' or 'harness', got '{variant}'.")
        super().__init__(**kwargs)
        self.variant = variant

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        return {**training_free_args(cfg), "variant": cfg.MODEL.MASKCLIP.VARIANT}

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        return f"{super().describe_protocol(cfg)}, last block: value embeddings ({cfg.MODEL.MASKCLIP.VARIANT} form)"

    def hooks(self, h: int, w: int) -> List[BlockHook]:
        released = self.variant == "released"
        return [BlockHook(layer=-1, attn_fn=identity_attention, residual=released, ffn=released)]
