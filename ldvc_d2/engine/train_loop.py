"""One optimizer step over K accumulation steps, equal to one step over the whole batch.

Per step k (of this process's K micro-batches): forward, then backward of ``loss_k * d_k`` where d_k
is what the loss divided by (:mod:`.normaliser`; 1 for a loss that reports nothing), without DDP's
gradient all-reduce except at the last step; then the gradients are divided by the full batch's
normaliser, ``max(sum of the counts c_k over steps and processes / processes, 1)``, and the optimizer
steps. With K = 1 this is detectron2's SimpleTrainer step. Before each forward the global torch RNG
(dropout) is seeded from (seed, iteration, j) with j = k*world + rank the micro-batch's index in the
iteration (the index :meth:`~.data.StreamBatchSampler.positions` uses): a micro-batch draws the same
dropout masks on any split of the batch (1 process × 4 steps, 4 processes × 1 step), and a resumed run
draws what the uninterrupted run drew.

Mixed precision (SOLVER.AMP.ENABLED, dtype SOLVER.AMP.DTYPE; detectron2's AMPTrainer, which this loop
replaces, does the same for float16 only): the forward runs under ``torch.autocast``, the losses are
taken in fp32 (the focal/dice loss upcasts the logits; the loop casts every loss term), the backward
runs outside autocast. float16 scales the loss with a GradScaler (its gradients would underflow); the
scale multiplies every micro-batch's gradient alike, so accumulation and the division by the normaliser
are unchanged, and the optimizer step is skipped, as GradScaler does, where a gradient is not finite
(the focal weight 100 makes gradients large: on the tiny demo model the scale backs off from
GradScaler's initial 2^16 to 2^8 over the first 8 steps, which are skipped, and settles near 2^6-2^8).
bfloat16 (the CPU's autocast dtype) has float32's exponent range and needs no scaler.
"""
import contextlib
import time
from typing import Dict, List, Optional

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from ..utils.precision import autocast
from .data import TrainStream, derive_seed
from ..utils.normaliser import recording_normalisers

__all__ = ["AccumulatingTrainer"]

_MODEL_RNG = 2


class AccumulatingTrainer(SimpleTrainer):
    """SimpleTrainer over a :class:`~ldvc_d2.engine.data.TrainStream` (K micro-batches per iteration)."""

    def __init__(self, model, data_loader: TrainStream, optimizer, *, amp_dtype: Optional[torch.dtype] = None):
        """``amp_dtype``: autocast dtype of the forward (None: fp32 training); float16 adds a GradScaler."""
        super().__init__(model, data_loader, optimizer)
        self._stream = None
        self.amp_dtype = amp_dtype
        self.device = next(model.parameters()).device
        self.grad_scaler = _grad_scaler(self.device) if amp_dtype == torch.float16 else None

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.grad_scaler is None else self.grad_scaler.scale(loss)).backward()

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])

    def run_step(self) -> None:
        assert self.model.training, "[AccumulatingTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        if self._stream is None:
            self.data_loader.start_iter = self.iter
            self._stream = iter(self.data_loader)
        micro_batches = next(self._stream)
        data_time = time.perf_counter() - start

        self.optimizer.zero_grad()
        counts: List[torch.Tensor] = []
        totals: Dict[str, torch.Tensor] = {}
        steps = len(micro_batches)
        for k, data in enumerate(micro_batches):
            micro_batch = k * comm.get_world_size() + comm.get_rank()
            torch.manual_seed(derive_seed(self.data_loader.seed, _MODEL_RNG, self.iter, micro_batch))
            last = k == steps - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with recording_normalisers() as noted, autocast(self.device, self.amp_dtype):
                    loss_dict = self.model(data)
                loss_dict = {name: value.float() for name, value in loss_dict.items()}
                losses = sum(loss_dict.values())
                if steps == 1:
                    self._backward(losses)
                else:
                    divisor, count = noted[0] if noted else (losses.new_tensor(1.0), losses.new_tensor(1.0))
                    self._backward(losses * divisor)
                    counts.append(count)
            for name, value in loss_dict.items():
                totals[name] = totals.get(name, 0.0) + value.detach() / steps
        if steps > 1:
            total = torch.stack(counts).sum()
            if comm.get_world_size() > 1:
                torch.distributed.all_reduce(total)
                total = total / comm.get_world_size()
            scale = 1.0 / total.clamp(min=1.0)
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(scale)
        self._write_metrics(totals, data_time)
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()


def _grad_scaler(device: torch.device):
    """GradScaler for float16 training on ``device`` (torch.amp's on torch >= 2.3, else torch.cuda.amp's)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    if device.type != "cuda":
        raise ValueError(f"SOLVER.AMP.DTYPE 'float16' on {device.type} needs torch >= 2.3 (GradScaler for "
                         f"{device.type}); use SOLVER.AMP.DTYPE 'bfloat16' there.")
    return torch.cuda.amp.GradScaler()
