"""Optimizer and LR schedule of LDVC (paper §4.1, following ZegCLIP): AdamW over the trainable
parameters only, poly decay (power 0.9) to SOLVER.POLY_LR_MIN after a linear warm-up; norm layers get
SOLVER.WEIGHT_DECAY_NORM (ZegCLIP: the same 0.01 as every other parameter)."""
import logging
from typing import Dict, List

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler
from tabulate import tabulate
from torch import nn

__all__ = ["PolyParamScheduler", "build_lr_scheduler", "build_optimizer", "full_model_gradient_clipping", "param_groups",
           "poly_end_factor", "warmup_fraction"]

logger = logging.getLogger(__name__)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm)


class PolyParamScheduler(ParamScheduler):
    """``end + (1 - end) * (1 - t) ** power`` over training progress t in [0, 1)."""

    def __init__(self, power: float, end: float = 0.0):
        self.power, self.end = power, end

    def __call__(self, where: float) -> float:
        return self.end + (1.0 - self.end) * (1.0 - where) ** self.power


def poly_end_factor(cfg) -> float:
    """SOLVER.POLY_LR_MIN (an absolute lr, as mmseg's ``min_lr``) as a fraction of SOLVER.BASE_LR: mmseg's
    ``(base - min) * (1 - t) ** power + min`` is ``base * PolyParamScheduler(power, min / base)(t)``."""
    if not 0.0 <= cfg.SOLVER.POLY_LR_MIN <= cfg.SOLVER.BASE_LR:
        raise ValueError(
            f"SOLVER.POLY_LR_MIN ({cfg.SOLVER.POLY_LR_MIN}) must lie in [0, SOLVER.BASE_LR={cfg.SOLVER.BASE_LR}]."
        )
    return cfg.SOLVER.POLY_LR_MIN / cfg.SOLVER.BASE_LR if cfg.SOLVER.BASE_LR > 0 else 0.0


def param_groups(model: nn.Module, cfg) -> List[Dict]:
    """One group per (role, weight decay) over parameters with requires_grad; frozen CLIP is left out.

    Roles: "prompts" (the VLPT prompts, and ZegCLIP's prompt projection/norm: every parameter of a
    module named ``prompt*``; lr × SOLVER.PROMPT_LR_MULTIPLIER) and "head" (everything else
    trainable); norm-layer parameters get SOLVER.WEIGHT_DECAY_NORM. A model may name roles of its own with
    a method ``lr_multipliers() -> {parameter-name prefix: (role, lr multiplier)}`` (e.g. a student's decode
    head at ×10, a proposal network's backbone at ×0.1); the longest matching prefix wins.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    own = model.lr_multipliers() if hasattr(model, "lr_multipliers") else {}
    prefixes = sorted(own, key=len, reverse=True)
    groups: Dict[tuple, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        match = next((pre for pre in prefixes if name == pre or name.startswith(pre + ".")), None)
        if match is not None:
            role, multiplier = own[match]
        elif any(part.startswith("prompt") for part in name.split(".")):
            role, multiplier = "prompts", cfg.SOLVER.PROMPT_LR_MULTIPLIER
        else:
            role, multiplier = "head", 1.0
        is_norm = id(p) in norm_params
        key = (role, is_norm)
        if key not in groups:
            lr = cfg.SOLVER.BASE_LR * multiplier
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
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return full_model_gradient_clipping(opt, float(clip.CLIP_VALUE), float(clip.NORM_TYPE))
    return maybe_add_gradient_clipping(cfg, opt)


def full_model_gradient_clipping(optimizer: torch.optim.Optimizer, max_norm: float,
                                 norm_type: float = 2.0) -> torch.optim.Optimizer:
    """``optimizer`` whose ``step`` first scales every gradient it updates so that their joint ``norm_type``
    norm is at most ``max_norm`` (SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model": one norm over the whole model,
    as MaskFormer-style trainers clip, where detectron2's "norm" clips each parameter on its own). Under AMP
    the GradScaler unscales the gradients before it calls ``step``, so the norm is that of the true gradients."""
    base = type(optimizer)

    class FullModelClipping(base):
        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return base.step(self, closure)

    FullModelClipping.__name__ = f"FullModelClipping{base.__name__}"
    optimizer.__class__ = FullModelClipping
    return optimizer


def warmup_fraction(cfg) -> float:
    """SOLVER.WARMUP_ITERS as a fraction of SOLVER.MAX_ITER, at most SOLVER.WARMUP_MAX_FRACTION.

    The warm-up ramps to the poly value at its end; a warm-up as long as the run ramps towards the
    end-of-schedule lr (POLY_LR_MIN, ~0), so the run would train at ~0 without a word. Clamped with a
    warning instead (e.g. a 40-iteration test of a config with 50 warm-up iterations: 20)."""
    max_iter, limit = max(cfg.SOLVER.MAX_ITER, 1), cfg.SOLVER.WARMUP_MAX_FRACTION
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"SOLVER.WARMUP_MAX_FRACTION must lie in (0, 1], got {limit}.")
    fraction = cfg.SOLVER.WARMUP_ITERS / max_iter
    if fraction > limit:
        logger.warning(
            f"SOLVER.WARMUP_ITERS ({cfg.SOLVER.WARMUP_ITERS}) is {fraction:.0%} of SOLVER.MAX_ITER ({max_iter}): "
            f"the lr would ramp towards its end-of-schedule value. Warm-up clamped to {int(limit * max_iter)} "
            f"iterations (SOLVER.WARMUP_MAX_FRACTION {limit})."
        )
        return int(limit * max_iter) / max_iter
    return fraction


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        from detectron2.solver import build_lr_scheduler as d2_build

        return d2_build(cfg, optimizer)
    sched = WarmupParamScheduler(
        PolyParamScheduler(cfg.SOLVER.POLY_LR_POWER, poly_end_factor(cfg)),
        cfg.SOLVER.WARMUP_FACTOR,
        warmup_fraction(cfg),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
