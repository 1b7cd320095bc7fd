"""Optimizer and LR schedule of LDVC (paper §4.1, following ZegCLIP): AdamW over the trainable
parameters only, poly decay (power 0.9) after a linear warm-up, no weight decay on norm layers."""
import logging
from typing import Dict, List

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler
from tabulate import tabulate
from torch import nn

__all__ = ["PolyParamScheduler", "build_lr_scheduler", "build_optimizer", "param_groups"]

logger = logging.getLogger(__name__)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm)


class PolyParamScheduler(ParamScheduler):
    """``end + (1 - end) * (1 - t) ** power`` over training progress t in [0, 1)."""

    def __init__(self, power: float, end: float = 0.0):
        self.power, self.end = power, end

    def __call__(self, where: float) -> float:
        return self.end + (1.0 - self.end) * (1.0 - where) ** self.power


def param_groups(model: nn.Module, cfg) -> List[Dict]:
    """One group per (role, weight decay) over parameters with requires_grad; frozen CLIP is left out.

    Roles: "prompts" (the VLPT prompts, and ZegCLIP's prompt projection/norm: every parameter of a
    module named ``prompt*``; lr × SOLVER.PROMPT_LR_MULTIPLIER) and "head" (everything else
    trainable); norm-layer parameters get SOLVER.WEIGHT_DECAY_NORM.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    groups: Dict[tuple, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = "prompts" if any(part.startswith("prompt") for part in name.split(".")) else "head"
        is_norm = id(p) in norm_params
        key = (role, is_norm)
        if key not in groups:
            lr = cfg.SOLVER.BASE_LR * (cfg.SOLVER.PROMPT_LR_MULTIPLIER if role == "prompts" else 1.0)
            wd = cfg.SOLVER.WEIGHT_DECAY_NORM if is_norm else cfg.SOLVER.WEIGHT_DECAY
            groups[key] = {"name": f"{role}{' (norm)' if is_norm else ''}", "params": [], "names": [],
                           "lr": lr, "weight_decay": wd}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) over the trainable parameters; logs a table of the groups."""
    groups = param_groups(model, cfg)
    rows = [[g["name"], len(g["params"]), sum(p.numel() for p in g["params"]), g["lr"], g["weight_decay"]]
            for g in groups]
    trainable = sum(r[2] for r in rows)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "Parameter groups:\n"
        + tabulate(rows, headers=["group", "tensors", "parameters", "lr", "weight decay"], tablefmt="pipe")
        + f"\nTrainable parameters: {trainable:,} ({trainable / 1e6:.2f}M) of {total:,} in total."
    )
    for g in groups:
        del g["names"], g["name"]
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        opt = torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    elif name == "SGD":
        opt = torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got '{cfg.SOLVER.OPTIMIZER}'.")
    return maybe_add_gradient_clipping(cfg, opt)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        from detectron2.solver import build_lr_scheduler as d2_build

        return d2_build(cfg, optimizer)
    sched = WarmupParamScheduler(
        PolyParamScheduler(cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_END),
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max(cfg.SOLVER.MAX_ITER, 1), 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
