"""Parameter counts and fvcore FLOPs of a model, for tools/analyze_model.py.

FLOPs follow the FLOPs tables of ZegCLIP and Mask2Former (one multiply-add counts as one flop). fvcore has
no handles for the attention ops PyTorch's fused kernels trace to; :data:`FLOP_HANDLES` counts them
(element-wise ops stay uncounted and are listed under "uncounted_ops").
"""
import warnings
from collections import OrderedDict
from typing import Dict

import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

__all__ = ["FLOP_HANDLES", "count_flops", "parameter_table"]


def parameter_table(model: nn.Module, depth: int = 2, prefix: str = "") -> "OrderedDict[str, Dict[str, int]]":
    """{module name (``prefix``.name) truncated to ``depth`` dotted parts: {"trainable": n, "total": n}}."""
    table: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    for name, p in model.named_parameters(prefix=prefix):
        key = ".".join(name.split(".")[:depth])
        row = table.setdefault(key, {"trainable": 0, "total": 0})
        row["total"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    return table


def _sdpa_flops(inputs, outputs) -> int:
    """aten::scaled_dot_product_attention: Q K^T and the weighted sum of V."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return int(np.prod(q[:-1])) * k[-2] * (q[-1] + v[-1])


def _native_mha_flops(inputs, outputs) -> int:
    """aten::_native_multi_head_attention (nn.MultiheadAttention's fast path, batch first):
    input projections, attention, output projection."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    b, lq, e = q
    lk = k[1]
    return b * lq * e * e + 2 * b * lk * e * e + 2 * b * lq * lk * e + b * lq * e * e


FLOP_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_flops,
    "aten::_native_multi_head_attention": _native_mha_flops,
}


def count_flops(module: nn.Module, image: torch.Tensor, depth: int) -> Dict[str, object]:
    """fvcore FLOPs of ``module(image)``, a wrapper holding the model as ``module.model``: total, per module
    of the model (``depth`` dotted parts), uncounted ops."""
    analysis = FlopCountAnalysis(module, (image,)).set_op_handle(**FLOP_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = analysis.total()
    by_module = {name[len("model."):]: int(n) for name, n in analysis.by_module().items()
                 if name.startswith("model.") and name.count(".") <= depth and n}
    return {"total": int(total), "by_module": by_module, "uncounted_ops": dict(analysis.unsupported_ops())}
