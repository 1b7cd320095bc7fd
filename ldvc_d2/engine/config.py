"""Training keys beside detectron2's SOLVER.* (optimizer, poly schedule, accumulation, AMP dtype) and how
MODEL.WEIGHTS is loaded. Read by ldvc_d2.solver, ldvc_d2.engine and ldvc_d2.checkpoint."""
from detectron2.config import CfgNode as CN

from ..utils.precision import AMP_DTYPES

__all__ = ["add_engine_config", "engine_config_problems"]


def add_engine_config(cfg: CN) -> None:
    """Add the SOLVER keys and MODEL.WEIGHTS_PARTIAL_LOAD (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    # False: MODEL.WEIGHTS must hold every trainable tensor with its shape and nothing else (error naming
    # the keys); True: load the matching part with a warning. Frozen CLIP tensors may always be absent.
    cfg.MODEL.WEIGHTS_PARTIAL_LOAD = False
    s = cfg.SOLVER
    s.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD", over the trainable parameters only
    s.BASE_LR = 2e-4  # [1.3]
    s.WEIGHT_DECAY = 0.01  # [1.3]
    # Paper silent; ZegCLIP's optimizer decays every trainable parameter at 0.01 (its 'norm'/'ln' decay_mult 0
    # keys never apply: mmcv stops at the first matching key, 'backbone' or 'head').
    s.WEIGHT_DECAY_NORM = 0.01
    s.PROMPT_LR_MULTIPLIER = 1.0  # lr multiplier of the CLIP prompts relative to BASE_LR
    s.LR_SCHEDULER_NAME = "WarmupPolyLR"  # linear warm-up, then poly decay [1.3]
    s.POLY_LR_POWER = 0.9  # poly schedule power [1.3]
    s.POLY_LR_MIN = 1e-6  # absolute lr the poly schedule ends at (paper silent; ZegCLIP's mmseg min_lr)
    s.WARMUP_ITERS = 1500  # linear warm-up iterations [1.3]
    s.WARMUP_FACTOR = 1e-6  # lr factor at iteration 0
    s.WARMUP_METHOD = "linear"  # ramp to the poly value at the end of the warm-up
    # The warm-up takes at most this fraction of MAX_ITER (longer: clamped, with a warning), so a short run
    # cannot ramp towards the end-of-schedule lr and train at ~0 (ours; the paper's runs use 2-8%).
    s.WARMUP_MAX_FRACTION = 0.5
    # Images one process (GPU) holds in one forward pass; where IMS_PER_BATCH / processes is more, the step
    # accumulates gradients over equal parts (ldvc_d2.engine.schedule). 0 = no limit (no accumulation).
    s.MAX_IMS_PER_GPU = 0
    # > 0 opts in to detectron2's linear rescaling of batch/lr/iterations to other process counts; 0 (ours)
    # trains IMS_PER_BATCH, BASE_LR and MAX_ITER as written on any number of processes.
    s.REFERENCE_WORLD_SIZE = 0
    # Autocast dtype of SOLVER.AMP.ENABLED training: "float16" (with a GradScaler) or "bfloat16" (no scaler;
    # the one CPUs run). detectron2's AMPTrainer has float16 only.
    s.AMP.DTYPE = "float16"


def engine_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with the training keys (for ``validate_config``), each message naming its key."""
    problems = []
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm", "full_model"):
        problems.append(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE is '{clip.CLIP_TYPE}'; use 'value', 'norm' (per parameter, "
                        "detectron2's) or 'full_model' (one norm over every updated gradient)")
    if cfg.SOLVER.AMP.DTYPE not in AMP_DTYPES:
        problems.append(f"SOLVER.AMP.DTYPE is '{cfg.SOLVER.AMP.DTYPE}'; use one of {list(AMP_DTYPES)}")
    if training:
        if int(cfg.SOLVER.MAX_ITER) <= 0:
            problems.append(f"SOLVER.MAX_ITER is {cfg.SOLVER.MAX_ITER}; training needs at least 1 iteration "
                            "(use --eval-only to evaluate)")
        if int(cfg.SOLVER.IMS_PER_BATCH) <= 0:
            problems.append(f"SOLVER.IMS_PER_BATCH is {cfg.SOLVER.IMS_PER_BATCH}; it must be > 0")
    return problems
