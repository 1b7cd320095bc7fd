"""Mixed precision shared by inference (MODEL.SEGMENTOR.INFERENCE.PRECISION) and training (SOLVER.AMP.*).

``torch.autocast`` runs matrix products and convolutions in the half dtype and keeps reductions, norms and
losses in fp32 (PyTorch's autocast op lists), so callers get fp32 where it matters by casting the outputs
they keep (scores, losses) back to fp32.
"""
import contextlib
from typing import ContextManager, Optional, Union

import torch

__all__ = ["PRECISION_DTYPES", "AMP_DTYPES", "autocast"]

PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # INFERENCE.PRECISION
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}  # SOLVER.AMP.DTYPE


def autocast(device: Union[torch.device, str], dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` on ``device``'s type in ``dtype``; a no-op for ``dtype`` None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
