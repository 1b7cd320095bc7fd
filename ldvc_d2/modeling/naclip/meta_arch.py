"""The NACLIP meta-architecture (Hajimiri et al., WACV 2025), training-free.

The last block's attention logits are the key-key similarity plus a neighbourhood prior,
A = softmax(s k kᵀ + Ω), Ω_ij = exp(−‖p_i − p_j‖² / (2σ²)) over patch positions (0 for [CLS]);
the "reduced architecture": the last block returns W_o(A v) + b_o, without residual and feed-forward, then
``ln_post`` and ``proj`` (released ``clip/model.py``, ``arch 'reduced'``, ``attn_strategy 'naclip'``).
:class:`~ldvc_d2.modeling.clip.attention.NeighbourhoodAttention`. PAMR (10 steps, dilations 8 and 16) is the
README row's post-processing (MODEL.SEGMENTOR.INFERENCE.PAMR_STEPS; the paper's tables are without it).
"""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip.attention import NeighbourhoodAttention
from ..clip.surgery import BlockHook
from ..training_free import TrainingFreeCLIPSegmentor, training_free_args

__all__ = ["NACLIP"]


@META_ARCH_REGISTRY.register()
class NACLIP(TrainingFreeCLIPSegmentor):
    """Training-free; built with no MODEL.WEIGHTS."""

    @configurable
    def __init__(self, *, gaussian_std: float = 5.0, attention: str = "naclip", arch: str = "reduced", **kwargs):
        """gaussian_std / attention / arch: MODEL.NACLIP.*; kwargs: :class:`TrainingFreeCLIPSegmentor`'s."""
        if arch not in ("reduced", "vanilla"):
            raise ValueError(f"MODEL.NACLIP.ARCH must be 'reduced' or 'vanilla', got '{arch}'.")
        NeighbourhoodAttention((1, 1), gaussian_std, attention)  # checks ATTENTION and GAUSSIAN_STD
        super().__init__(**kwargs)
        self.gaussian_std, self.attention, self.arch = float(gaussian_std), attention, arch

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        c = cfg.MODEL.NACLIP
        return {**training_free_args(cfg), "gaussian_std": c.GAUSSIAN_STD, "attention": c.ATTENTION, "arch": c.ARCH}

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        c = cfg.MODEL.NACLIP
        return f"{super().describe_protocol(cfg)}, last block: {c.ATTENTION} attention (sigma {c.GAUSSIAN_STD}), {c.ARCH}"

    def hooks(self, h: int, w: int) -> List[BlockHook]:
        vanilla = self.arch == "vanilla"
        return [BlockHook(layer=-1, attn_fn=NeighbourhoodAttention((h, w), self.gaussian_std, self.attention),
                          residual=vanilla, ffn=vanilla)]
