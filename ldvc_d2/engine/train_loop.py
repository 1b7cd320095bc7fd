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
"""
import contextlib
import time
from typing import Dict, List

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from .data import TrainStream, derive_seed
from .normaliser import recording_normalisers

__all__ = ["AccumulatingTrainer"]

_MODEL_RNG = 2


class AccumulatingTrainer(SimpleTrainer):
    """SimpleTrainer over a :class:`~ldvc_d2.engine.data.TrainStream` (K micro-batches per iteration)."""

    def __init__(self, model, data_loader: TrainStream, optimizer):
        super().__init__(model, data_loader, optimizer)
        self._stream = None

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
                with recording_normalisers() as noted:
                    loss_dict = self.model(data)
                losses = sum(loss_dict.values())
                if steps == 1:
                    losses.backward()
                else:
                    divisor, count = noted[0] if noted else (losses.new_tensor(1.0), losses.new_tensor(1.0))
                    (losses * divisor).backward()
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
        self.optimizer.step()
