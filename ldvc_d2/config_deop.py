"""Config keys of DeOP (seed 004, SEED_SYSTEMS §4) and of patch severance as an LDVC backbone option.

Defaults follow the released code where it and the paper differ (SEED_SYSTEMS §4.2); docs/deop.md lists
both. Stage 3 (DeOP training) reads MODEL.DEOP.*; the CLIP tower keys stay MODEL.LDVC.CLIP_*.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_deop_config", "deop_config_problems", "PROPOSAL_SOURCES", "DEOP_LOSSES"]

PROPOSAL_SOURCES = ("maskformer", "gt", "clusters")
DEOP_LOSSES = ("released", "paper")


def add_deop_config(cfg: CN) -> None:
    """Add MODEL.DEOP.* and MODEL.LDVC.PATCH_SEVERANCE_* (called at the end of ``add_ldvc_config``)."""
    cfg.MODEL.DEOP = CN()
    cfg.MODEL.DEOP.NUM_PROPOSALS = 100  # N mask proposals = CAL anchor queries, tied by index [D1, D6]
    # "maskformer" (stage-2 network, frozen), "gt" (ORACLE: ground-truth segments, diagnostic only) or
    # "clusters" (CLIPtrase-style DBSCAN regions of a plain CLIP pass, training-free)
    cfg.MODEL.DEOP.PROPOSALS = "maskformer"
    cfg.MODEL.DEOP.PROPOSAL_WEIGHTS = ""  # stage-2 checkpoint, keys "proposal_net.*" (needed by "maskformer")
    cfg.MODEL.DEOP.BINARY_MASK_LOGIT = 10.0  # logit of inside/outside (±) for the binary "gt"/"clusters" masks (ours)
    cfg.MODEL.DEOP.CLUSTER_LAYER = -2  # block whose q/k/v self-correlation is clustered ("clusters"; CLIPtrase T1)
    cfg.MODEL.DEOP.CLUSTER_EPS = 0.7  # DBSCAN radius at 196 patches (CLIPtrase paper value) ["clusters"]
    cfg.MODEL.DEOP.CLUSTER_MIN_SAMPLES = 3  # DBSCAN min_samples at 196 patches ["clusters"]
    cfg.MODEL.DEOP.CLUSTER_SCALE = "grid"  # "fixed" or "grid": scale eps/min_samples with the patch count (ours)
    # Patch severance [D3]: blocks (negative = from the end; released code: block 11 of ViT-B/16 = -1)
    cfg.MODEL.DEOP.GPS_LAYERS = [-1]
    cfg.MODEL.DEOP.GPS_ALPHA = [1.0]  # α per GPS layer, or one for all (paper Table 4: α_-1 = 1)
    cfg.MODEL.DEOP.GPS_MODE = "mask_weighted"  # "mask_weighted" (released), "gps" (paper eq. 2), "mask_guided" (eq. 1)
    cfg.MODEL.DEOP.VISUAL_PROMPT_LAYERS = [0, 1, 2, 3, 4, 5]  # additive prompts P_b: 0 before ln_pre, b before block b [D2]
    # CLIP's positional grid resized to the input's: "bicubic_size" (released code) or "bilinear" (as LDVC)
    cfg.MODEL.DEOP.POS_INTERPOLATION = "bicubic_size"
    cfg.MODEL.DEOP.VISUAL_PROMPT_GRID = 24  # learned grid side (released: 384 px / 16), resized bicubically [D2]
    cfg.MODEL.DEOP.TEXT_CTX = 16  # CoOp context tokens, shallow [D5]
    cfg.MODEL.DEOP.TEXT_CTX_INIT_STD = 0.02  # their N(0, std²) initialisation [D5]
    cfg.MODEL.DEOP.TEXT_PROMPT_WEIGHTS = ""  # stage-1 checkpoint whose one key ending in "ctx" initialises TEXT_CTX
    cfg.MODEL.DEOP.CAL_LAYERS = 1  # DETR decoder layers before the heat-map layer (Table 5: K = 1) [D6]
    cfg.MODEL.DEOP.CAL_HEADS = 8  # heads of CAL's attention and of the heat-map pooling [D6, D7]
    cfg.MODEL.DEOP.CAL_FFN = 1024  # FFN width of the CAL decoder layer [D6]
    cfg.MODEL.DEOP.CAL_DROPOUT = 0.1  # dropout in CAL's layers [D6]
    cfg.MODEL.DEOP.LOGIT_SCALE = 100.0  # ℓ_n = scale · F_I,n · Tᵀ [D8]
    cfg.MODEL.DEOP.OUTPUT_SIG = 3.0  # p = σ(k·S′ − k) in the released loss [D10]
    cfg.MODEL.DEOP.LOSS = "released"  # "released" [D10] or "paper" (plain sigmoid focal + dice on S)
    cfg.MODEL.DEOP.LOSS_WEIGHTS = [2.0, 0.8]  # (focal, dice) weights (deop_train.sh) [D10]
    cfg.MODEL.DEOP.LOSS_NUM_CLASS = 0  # channels in the per-image dice; 0 = all training classes (15 VOC, 156 COCO) [D10]
    # Patch severance as an LDVC backbone option (pure GPS; LDVC has no proposals): blocks, [] = off
    cfg.MODEL.LDVC.PATCH_SEVERANCE_LAYERS = []
    cfg.MODEL.LDVC.PATCH_SEVERANCE_ALPHA = [1.0]  # α per layer or one for all (eq. 2)


def deop_config_problems(cfg: CN, training: bool = False) -> list:
    """What is wrong with the keys above (for ``validate_config``), each naming its key."""
    d, problems = cfg.MODEL.DEOP, []
    if (training and cfg.MODEL.META_ARCHITECTURE == "DeOP" and d.PROPOSALS == "maskformer" and not d.PROPOSAL_WEIGHTS
            and not cfg.MODEL.WEIGHTS):
        problems.append("MODEL.DEOP.PROPOSAL_WEIGHTS is empty; DeOP training with PROPOSALS 'maskformer' needs the "
                        "stage-2 checkpoint (configs/deop/proposals_*.yaml), or PROPOSALS 'gt' / 'clusters'")
    if d.PROPOSALS not in PROPOSAL_SOURCES:
        problems.append(f"MODEL.DEOP.PROPOSALS is '{d.PROPOSALS}'; use one of {list(PROPOSAL_SOURCES)}")
    if d.LOSS not in DEOP_LOSSES:
        problems.append(f"MODEL.DEOP.LOSS is '{d.LOSS}'; use one of {list(DEOP_LOSSES)}")
    if len(d.LOSS_WEIGHTS) != 2:
        problems.append(f"MODEL.DEOP.LOSS_WEIGHTS needs 2 values (focal, dice), got {list(d.LOSS_WEIGHTS)}")
    if int(d.NUM_PROPOSALS) < 1:
        problems.append(f"MODEL.DEOP.NUM_PROPOSALS is {d.NUM_PROPOSALS}; it must be >= 1")
    if d.POS_INTERPOLATION not in ("bicubic_size", "bilinear"):
        problems.append(f"MODEL.DEOP.POS_INTERPOLATION is '{d.POS_INTERPOLATION}'; use 'bicubic_size' or 'bilinear'")
    # the severance module owns its modes; imported here, not at the top: ldvc_d2.modeling imports this file
    from .modeling.clip.severance import GPS_MODES

    if d.GPS_MODE not in GPS_MODES:
        problems.append(f"MODEL.DEOP.GPS_MODE is '{d.GPS_MODE}'; use one of {list(GPS_MODES)}")
    for key, layers, alphas in (("MODEL.DEOP.GPS", d.GPS_LAYERS, d.GPS_ALPHA),
                                ("MODEL.LDVC.PATCH_SEVERANCE", cfg.MODEL.LDVC.PATCH_SEVERANCE_LAYERS,
                                 cfg.MODEL.LDVC.PATCH_SEVERANCE_ALPHA)):
        if layers and len(alphas) not in (1, len(layers)):
            problems.append(f"{key}_ALPHA has {len(alphas)} values for {len(layers)} layers; give 1 or one per layer")
        if any(not 0.0 <= a <= 1.0 for a in alphas):
            problems.append(f"{key}_ALPHA values must be in [0, 1], got {list(alphas)}")
    return problems
