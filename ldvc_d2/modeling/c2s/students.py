"""Student segmenters of C2S: closed-set segmentation networks ending in a projection to CLIP's width.

Seed 003 §4 distils into SegNeXt-B, SETR-B and SegFormer-B4; every student's dense features
F ∈ ℝ^{D×H×W} (SEED_SYSTEMS §3.1 C1) come from "a 1×1 projection to D = 512 channels", D being CLIP's
joint embedding width. Built from maintained implementations (the ``c2s`` extra:
``pip install -e ".[c2s]"``), never written by hand:

* ``segformer_b0`` … ``segformer_b5``: Hugging Face ``transformers``' SegFormer (MiT encoder + all-MLP
  decoder); its final 1×1 classifier with D outputs *is* the projection. Output stride 4.
* ``setr_b``: ``timm``'s ViT-B/16 + SETR's naive head (MMSeg's ``SETRUPHead`` with one 1×1 conv:
  LayerNorm → 1×1 conv → BatchNorm → ReLU → ×4 bilinear) and a 1×1 projection to D. Output stride 4.
* ``segformer_tiny`` / ``setr_tiny``: the same code at toy widths (tests, the shapes benchmark).

A student is ``forward(images B×3×H×W) -> B×D×H/4×W/4`` with ``output_stride`` and ``size_divisibility``
attributes. Register more with ``@C2S_STUDENT_REGISTRY.register()`` on a function
``(embed_dim, weights, img_size, drop_path) -> nn.Module``.
"""
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["C2S_STUDENT_REGISTRY", "SETRStudent", "SegformerStudent", "build_student"]

C2S_STUDENT_REGISTRY = Registry("C2S_STUDENT")
C2S_STUDENT_REGISTRY.__doc__ = "C2S students: (embed_dim, weights, img_size, drop_path) -> nn.Module."

# MiT variants (SegFormer paper Table 6 / the nvidia/mit-b* configs): widths, depths, decoder width
_MIT = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}


def _need(package: str):
    try:
        return __import__(package)
    except ImportError as e:
        raise ImportError(f"C2S students need '{package}': pip install -e \".[c2s]\" (transformers, timm).") from e


class SegformerStudent(nn.Module):
    """SegFormer (MiT encoder + all-MLP decoder) whose classifier outputs ``embed_dim`` channels.

    Args:
        widths / depths / heads / decoder_width: the MiT variant.
        weights: "" (random) or a Hugging Face folder / hub id of a MiT encoder of the same variant.
    """

    output_stride = 4
    size_divisibility = 32
    head_prefixes = ("model.decode_head",)  # MMSeg's decode_head: linear_c, linear_fuse, its BN, the classifier

    def __init__(self, embed_dim: int, widths: Sequence[int], depths: Sequence[int], heads: Sequence[int],
                 decoder_width: int, weights: str = "", drop_path: float = 0.1):
        super().__init__()
        transformers = _need("transformers")
        config = transformers.SegformerConfig(
            num_channels=3, num_encoder_blocks=4, depths=list(depths), hidden_sizes=list(widths),
            num_attention_heads=list(heads), sr_ratios=[8, 4, 2, 1], decoder_hidden_size=decoder_width,
            drop_path_rate=drop_path, num_labels=embed_dim,
        )
        self.model = transformers.SegformerForSemanticSegmentation(config)
        if weights:
            try:
                encoder = transformers.SegformerModel.from_pretrained(weights)
            except OSError as e:
                raise OSError(f"MODEL.C2S.STUDENT_WEIGHTS: cannot load a SegFormer (MiT) encoder from '{weights}': "
                              "give a local Hugging Face folder (config.json + weights) or a reachable hub id "
                              f"such as nvidia/mit-b4. ({e})") from e
            got = (list(encoder.config.hidden_sizes), list(encoder.config.depths))
            if got != (list(widths), list(depths)):
                raise ValueError(f"MODEL.C2S.STUDENT_WEIGHTS '{weights}' is a MiT encoder with widths/depths {got}, "
                                 f"not {(list(widths), list(depths))}: choose the matching MODEL.C2S.STUDENT.")
            self.model.segformer.load_state_dict(encoder.state_dict())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).logits


class SETRStudent(nn.Module):
    """timm ViT + SETR's naive head + a 1×1 projection to ``embed_dim`` (SETR-Naive, Zheng et al. 2021).

    Args:
        out_dim: CLIP's embedding width D (the projection's output).
        vit_name / vit_kwargs: a timm ViT architecture and overrides (the tiny variant's sizes).
        weights: "" (random), a local checkpoint file (.pth/.bin/.pkl through the safe loader, .safetensors) of
            a timm ViT of ``vit_name``'s architecture, or a timm pretrained name; position embeddings are
            resampled to ``img_size`` and a classifier in the file is dropped (timm's checkpoint filter).
        head_width: channels of the naive head (MMSeg: 256).
    """

    output_stride = 4
    head_prefixes = ("norm", "head", "proj")  # MMSeg's SETRUPHead owns its LayerNorm, conv-BN-ReLU and classifier

    def __init__(self, out_dim: int, vit_name: str, weights: str = "", img_size: int = 512, drop_path: float = 0.1,
                 head_width: int = 256, **vit_kwargs):
        super().__init__()
        timm = _need("timm")
        args = dict(img_size=img_size, num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path, **vit_kwargs)
        local = bool(weights) and (os.sep in weights or weights.endswith(_FILE_SUFFIXES))
        if local and not os.path.isfile(weights):
            raise FileNotFoundError(f"MODEL.C2S.STUDENT_WEIGHTS: checkpoint file '{weights}' does not exist (a local timm "
                                    "ViT-B/16 checkpoint, or a timm pretrained name, or '' for random weights).")
        try:
            if local:  # read safely here; timm's own loader would unpickle the file
                state = _vit_state(weights)
                head = state.get("head.weight")
                overlay = {"state_dict": state, "num_classes": int(head.shape[0]) if head is not None else 0}
                self.vit = timm.create_model(vit_name, pretrained=True, pretrained_cfg_overlay=overlay, **args)
            else:
                self.vit = timm.create_model(weights or vit_name, pretrained=bool(weights), **args)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise RuntimeError(f"MODEL.C2S.STUDENT_WEIGHTS: cannot build the SETR ViT from '{weights}': give a local "
                               "checkpoint file of a timm ViT-B/16 or a timm pretrained name. "
                               f"({type(e).__name__}: {e})") from e
        width, self.patch = self.vit.embed_dim, self.vit.patch_embed.patch_size[0]
        self.size_divisibility = self.patch
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Conv2d(width, head_width, 1, bias=False), nn.BatchNorm2d(head_width), nn.ReLU(True))
        self.proj = nn.Conv2d(head_width, out_dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        tokens = self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]
        grid = self.norm(tokens).transpose(1, 2).reshape(b, -1, h // self.patch, w // self.patch)
        x = F.interpolate(self.head(grid), scale_factor=self.patch // self.output_stride, mode="bilinear",
                          align_corners=False)
        return self.proj(x)


_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".safetensors")


def _vit_state(path: str) -> dict:
    """A timm ViT state dict from a local file, read without running code (safetensors, or the safe
    unpickler of :func:`ldvc_d2.checkpoint.load_checkpoint_file`); "state_dict"/"model" wrappers unwrapped."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    from ...checkpoint import load_checkpoint_file

    state = load_checkpoint_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' holds a {type(state).__name__}, not a state dict")
    return {k: torch.as_tensor(v) for k, v in state.items()}


def _register_segformer(name: str, widths, depths, heads, decoder_width) -> None:
    def build(embed_dim: int, weights: str = "", img_size: int = 512, drop_path: float = 0.1) -> nn.Module:
        return SegformerStudent(embed_dim, widths, depths, heads, decoder_width, weights, drop_path)

    build.__name__ = name
    C2S_STUDENT_REGISTRY.register(build)


for _variant, (_widths, _depths, _decoder) in _MIT.items():
    _register_segformer(f"segformer_{_variant}", _widths, _depths, [1, 2, 5, 8], _decoder)
_register_segformer("segformer_tiny", [8, 16, 32, 64], [1, 1, 1, 1], [1, 1, 2, 4], 32)


@C2S_STUDENT_REGISTRY.register()
def setr_b(embed_dim: int, weights: str = "", img_size: int = 512, drop_path: float = 0.1) -> nn.Module:
    """SETR-B: ViT-B/16 (12 × 768; the 384-px architecture of SETR's ImageNet-21k weights, position
    embeddings resampled to the crop) + naive head 256."""
    return SETRStudent(embed_dim, "vit_base_patch16_384", weights, img_size, drop_path)


@C2S_STUDENT_REGISTRY.register()
def setr_tiny(embed_dim: int, weights: str = "", img_size: int = 64, drop_path: float = 0.0) -> nn.Module:
    """A 2-block ViT of width 32 with patch 8 (tests and the shapes world)."""
    return SETRStudent(embed_dim, "vit_tiny_patch16_224", weights, img_size, drop_path, head_width=32,
                       patch_size=8, embed_dim=32, depth=2, num_heads=2)


def build_student(name: str, embed_dim: int, *, weights: str = "", img_size: int = 512,
                  drop_path: float = 0.1) -> nn.Module:
    """The registered student ``name`` projecting to ``embed_dim`` channels."""
    if name not in C2S_STUDENT_REGISTRY:
        known = sorted(k for k, _ in C2S_STUDENT_REGISTRY)
        raise ValueError(f"MODEL.C2S.STUDENT '{name}' is not a registered student; known: {known}.")
    return C2S_STUDENT_REGISTRY.get(name)(embed_dim, weights=weights, img_size=img_size, drop_path=drop_path)
