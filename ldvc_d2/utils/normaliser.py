"""Loss normalisers seen by the training loop, for gradient accumulation that equals the full batch.

The focal/dice loss (:mod:`ldvc_d2.modeling.losses`) divides a sum S over (image, class) pairs by the
number of pairs present in the batch (all-reduced over processes, divided by their number, at least 1).
Averaging K micro-batch losses is not the full-batch loss when the micro-batches hold different numbers
of pairs. So the loss reports its divisor d_k and this process's own count c_k here; the training loop
back-propagates ``loss_k * d_k`` (= S_k, the plain sum) and divides the accumulated gradients by
``max(sum_k c_k (all-reduced) / processes, 1)``: exactly the gradient of the full-batch loss. A loss that
reports nothing counts (1, 1) per micro-batch: its micro-batch losses are averaged.

The loss notes here and the training loop (:mod:`ldvc_d2.engine.train_loop`) records here, so the module
sits below both: the models import nothing of the engine.
"""
import contextlib
from typing import Iterator, List, Optional, Tuple

import torch

__all__ = ["note_loss_normaliser", "recording_normalisers"]

_active: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None


def note_loss_normaliser(divisor: torch.Tensor, count: torch.Tensor) -> None:
    """Called by a loss with the scalar it divided by and this process's unclamped count; a no-op
    unless a training step records."""
    if _active is not None:
        _active.append((divisor.detach(), count.detach()))


@contextlib.contextmanager
def recording_normalisers() -> Iterator[List[Tuple[torch.Tensor, torch.Tensor]]]:
    """Collects the (divisor, count) pairs noted during one forward pass (the list is filled in place)."""
    global _active
    saved, _active = _active, []
    try:
        yield _active
    finally:
        _active = saved
