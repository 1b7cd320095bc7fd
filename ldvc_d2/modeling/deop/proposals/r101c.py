"""The released proposal network's backbone, R101c, as a timm ResNet (SEED_SYSTEMS §4.1 D1).

The MaskFormer that produced DeOP's proposals uses detectron2's DeepLab ResNet-101 "R101c": a stem of three
3×3 convolutions (3→64 stride 2, 64→64, 64→128, each with a norm and ReLU, then a 3×3 max-pool), stride in
the 3×3 conv of each bottleneck, and res5 with multi-grid dilations [1, 2, 4] on its three 3×3 convs while
keeping stride 2 (RES5_DILATION 1, released ``zero_shot_maskformer_R101c_*.yaml``). timm's ``resnet101s``
has exactly this stem (``stem_type='deep', stem_width=64``: 64/64/128) and bottlenecks; :func:`apply_multi_grid`
adds the dilations. Its ImageNet weights ``R-103.pkl`` (MaskFormer MODEL_ZOO.md) are a detectron2 pickle of
NumPy arrays under detectron2 names; :func:`detectron2_resnet_to_timm` renames them for timm.

detectron2 name (after stripping ``backbone.`` / ``backbone.bottom_up.``)   → timm name
    stem.conv1[.norm] / stem.conv2[.norm] / stem.conv3[.norm]   → conv1.0 [conv1.1] / conv1.3 [conv1.4] / conv1.6 [bn1]
    res{s}.{i}.conv{j}[.norm]                                   → layer{s-1}.{i}.conv{j} [bn{j}]
    res{s}.0.shortcut[.norm]                                    → layer{s-1}.0.downsample.0 [downsample.1]
Anything else (an ImageNet classifier ``linear.*``/``fc.*``) is dropped.
"""
import re
from typing import Dict, Mapping, Sequence

import torch
from torch import nn

__all__ = ["apply_multi_grid", "detectron2_resnet_to_timm", "is_detectron2_resnet"]

_STEM = {"stem.conv1": "conv1.0", "stem.conv1.norm": "conv1.1", "stem.conv2": "conv1.3", "stem.conv2.norm": "conv1.4",
         "stem.conv3": "conv1.6", "stem.conv3.norm": "bn1"}
_RES = re.compile(r"^res([2-5])\.(\d+)\.(conv[1-3]|shortcut)(\.norm)?$")
_PREFIXES = ("backbone.bottom_up.", "backbone.")


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def is_detectron2_resnet(state: Mapping[str, object]) -> bool:
    """True when the keys are detectron2 ResNet names (``stem.*`` and ``res2.*``)."""
    names = {_strip(k) for k in state}
    return any(n.startswith("stem.") for n in names) and any(n.startswith("res2.") for n in names)


def detectron2_resnet_to_timm(state: Mapping[str, object]) -> Dict[str, torch.Tensor]:
    """detectron2 ResNet state dict (tensors or NumPy arrays) → timm ResNet names and tensors (table above)."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = _strip(key).rpartition(".")
        if module in _STEM:
            new = f"{_STEM[module]}.{leaf}"
        else:
            match = _RES.match(module)
            if match is None:
                continue  # classifier or other non-backbone tensors
            stage, block, conv, norm = match.groups()
            layer = f"layer{int(stage) - 1}.{block}"
            if conv == "shortcut":
                new = f"{layer}.downsample.{1 if norm else 0}.{leaf}"
            else:
                new = f"{layer}.{'bn' if norm else 'conv'}{conv[4:]}.{leaf}"
        out[new] = torch.as_tensor(value)
    return out


def apply_multi_grid(backbone: nn.Module, grid: Sequence[int]) -> None:
    """Dilate the 3×3 conv of res5 block i (timm ``layer4[i].conv2``) by ``grid[i]``, stride unchanged
    (detectron2's DeepLab ResNet: ``dilation_per_block = [RES5_DILATION · m for m in RES5_MULTI_GRID]``).

    Padding = dilation keeps the map size. ``grid`` must have one entry per res5 block of a bottleneck ResNet.
    """
    layer4 = getattr(backbone, "layer4", None)
    if layer4 is None or len(layer4) != len(grid) or not all(hasattr(b, "conv2") and hasattr(b, "conv3") for b in layer4):
        blocks = len(layer4) if layer4 is not None else 0
        raise ValueError(f"MODEL.DEOP.PROPOSAL_NET.RES5_MULTI_GRID {list(grid)} needs a bottleneck ResNet whose res5 "
                         f"has {len(grid)} blocks; this backbone's has {blocks} (use BACKBONE 'resnet101s', or [] for none).")
    for block, m in zip(layer4, grid):
        conv = block.conv2
        if conv.kernel_size != (3, 3):
            raise ValueError("MODEL.DEOP.PROPOSAL_NET.RES5_MULTI_GRID: res5's middle convs must be 3×3.")
        conv.dilation, conv.padding = (int(m), int(m)), (int(m), int(m))
