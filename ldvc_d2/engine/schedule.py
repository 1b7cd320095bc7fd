"""The training schedule as written, on any number of processes.

SOLVER.IMS_PER_BATCH is the total batch of one optimizer step (the paper: 16) and BASE_LR, MAX_ITER and
WARMUP_ITERS are used as written whatever the number of processes. Each process takes
IMS_PER_BATCH / world images per step; where that is more than SOLVER.MAX_IMS_PER_GPU (what one GPU
holds in one forward pass; 0 = no limit), the share is split into K accumulation steps of equal size
(the smallest K that divides the share), so 1, 2, 4 or 8 GPUs train the same schedule.

detectron2's linear rescaling (batch, lr, iterations and warm-up scaled by world / REFERENCE_WORLD_SIZE,
which AdamW does not make equivalent) stays available as an opt-in: SOLVER.REFERENCE_WORLD_SIZE > 0.
"""
import logging
from typing import NamedTuple

from detectron2.engine import DefaultTrainer

__all__ = ["BatchPlan", "batch_plan", "resolve_schedule"]

logger = logging.getLogger(__name__)


class BatchPlan(NamedTuple):
    """How one optimizer step of ``total`` images is split: ``world`` processes × ``steps``
    accumulation steps × ``per_step`` images per forward pass."""

    total: int
    world: int
    steps: int
    per_step: int


def batch_plan(cfg, world_size: int) -> BatchPlan:
    """The split of SOLVER.IMS_PER_BATCH over ``world_size`` processes; a clear error where it cannot be."""
    total, cap = int(cfg.SOLVER.IMS_PER_BATCH), int(cfg.SOLVER.MAX_IMS_PER_GPU)
    if total <= 0 or total % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) is the total batch of one step and must be a positive multiple "
            f"of the number of processes ({world_size}); change it or --num-gpus/--num-machines."
        )
    if cap < 0:
        raise ValueError(f"SOLVER.MAX_IMS_PER_GPU must be >= 0 (0 = no limit), got {cap}.")
    share = total // world_size
    steps = next(k for k in range(1, share + 1) if share % k == 0 and (cap == 0 or share // k <= cap))
    return BatchPlan(total, world_size, steps, share // steps)


def resolve_schedule(cfg, world_size: int):
    """The config trained on ``world_size`` processes: unchanged by default; detectron2's linear
    rescaling when SOLVER.REFERENCE_WORLD_SIZE > 0. Logs the batch split."""
    if cfg.SOLVER.REFERENCE_WORLD_SIZE > 0:
        cfg = DefaultTrainer.auto_scale_workers(cfg, world_size)
    plan = batch_plan(cfg, world_size)
    logger.info(
        f"Total batch {plan.total} per step = {plan.world} process(es) x {plan.steps} accumulation step(s) x "
        f"{plan.per_step} image(s); lr {cfg.SOLVER.BASE_LR}, {cfg.SOLVER.MAX_ITER} iterations."
    )
    return cfg
