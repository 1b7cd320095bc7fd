"""MODEL.DEOP: DeOP's keys (seed 004, SEED_SYSTEMS §4): stage 3 (MODEL.DEOP.*), its proposal network of stage 2
(MODEL.DEOP.PROPOSAL_NET.*) and the prompt learning of stage 1 (MODEL.DEOP.PROMPT_LEARNING.*).

Defaults follow the released code where it and the paper differ (SEED_SYSTEMS §4.2); docs/deop.md lists both.
The CLIP tower is MODEL.CLIP's (Base-DeOP.yaml: ViT-B/16, the released bicubic positional resize).
"""
from detectron2.config import CfgNode as CN

from ..clip.severance import GPS_MODES, check_severance_alpha

__all__ = ["DEOP_LOSSES", "MASK_FILLS", "PROPOSAL_SOURCES", "add_deop_config", "deop_config_problems"]

PROPOSAL_SOURCES = ("maskformer", "gt", "clusters")
DEOP_LOSSES = ("released", "paper")
MASK_FILLS = ("mean", "none")  # MODEL.DEOP.PROMPT_LEARNING.MASK_FILL; also checked by DeOPPromptLearner


def add_deop_config(cfg: CN) -> None:
    """Add MODEL.DEOP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    d = cfg.MODEL.DEOP = CN()
    d.NUM_PROPOSALS = 100  # N mask proposals = CAL anchor queries, tied by index [D1, D6]
    # "maskformer" (stage-2 network, frozen), "gt" (ORACLE: ground-truth segments, diagnostic only) or
    # "clusters" (CLIPtrase-style DBSCAN regions of a plain CLIP pass, training-free)
    d.PROPOSALS = "maskformer"
    d.PROPOSAL_WEIGHTS = ""  # stage-2 checkpoint, keys "proposal_net.*" (needed by "maskformer")
    d.BINARY_MASK_LOGIT = 10.0  # logit of inside/outside (±) for the binary "gt"/"clusters" masks (ours)
    d.CLUSTER_LAYER = -2  # block whose q/k/v self-correlation is clustered ("clusters"; CLIPtrase T1)
    d.CLUSTER_EPS = 0.7  # DBSCAN radius at 196 patches (CLIPtrase paper value) ["clusters"]
    d.CLUSTER_MIN_SAMPLES = 3  # DBSCAN min_samples at 196 patches ["clusters"]
    d.CLUSTER_SCALE = "grid"  # "fixed" or "grid": scale eps/min_samples with the patch count (ours)
    # Patch severance [D3]: blocks (negative = from the end; released code: block 11 of ViT-B/16 = -1)
    d.GPS_LAYERS = [-1]
    d.GPS_ALPHA = [1.0]  # α per GPS layer, or one for all (paper Table 4: α_-1 = 1)
    d.GPS_MODE = "mask_weighted"  # "mask_weighted" (released), "gps" (paper eq. 2), "mask_guided" (eq. 1)
    d.VISUAL_PROMPT_LAYERS = [0, 1, 2, 3, 4, 5]  # additive prompts P_b: 0 before ln_pre, b before block b [D2]
    d.VISUAL_PROMPT_GRID = 24  # learned grid side (released: 384 px / 16), resized bicubically [D2]
    d.TEXT_CTX = 16  # CoOp context tokens, shallow [D5]
    d.TEXT_CTX_INIT_STD = 0.02  # their N(0, std²) initialisation [D5]
    d.TEXT_PROMPT_WEIGHTS = ""  # stage-1 checkpoint whose one key ending in "ctx" initialises TEXT_CTX
    # True: stage 3 may start from random text prompts without TEXT_PROMPT_WEIGHTS (shapes/tests; ours)
    d.ALLOW_RANDOM_TEXT_PROMPTS = False
    d.CAL_LAYERS = 1  # DETR decoder layers before the heat-map layer (Table 5: K = 1) [D6]
    d.CAL_HEADS = 8  # heads of CAL's attention and of the heat-map pooling [D6, D7]
    d.CAL_FFN = 1024  # FFN width of the CAL decoder layer [D6]
    d.CAL_DROPOUT = 0.1  # dropout in CAL's layers [D6]
    d.CAL_HEAT_DROPOUT = 0.1  # dropout on the heat weights softmax(q·k) before the mask, training only (released: 0.1) [D7]
    d.CAL_HEATMAP_HEADS = 0  # heads of the heat-map pooling; 0 = CAL_HEADS (released 8); 1 = paper eq. 3 [D7]
    d.LOGIT_SCALE = 100.0  # ℓ_n = scale · F_I,n · Tᵀ [D8]
    d.OUTPUT_SIG = 3.0  # p = σ(k·S′ − k) in the released loss [D10]
    d.LOSS = "released"  # "released" [D10] or "paper" (plain sigmoid focal + dice on S)
    d.LOSS_WEIGHTS = [2.0, 0.8]  # (focal, dice) weights (deop_train.sh) [D10]
    d.LOSS_NUM_CLASS = 0  # channels in the per-image dice; 0 = all training classes (15 VOC, 156 COCO) [D10]
    _add_proposal_net(d)
    _add_prompt_learning(d)


def _add_proposal_net(d: CN) -> None:
    """MODEL.DEOP.PROPOSAL_NET: the stage-2 MaskFormer (MODEL.META_ARCHITECTURE "DeOPProposals") [D1]."""
    p = d.PROPOSAL_NET = CN()
    # timm ResNet of the proposal network (any timm ResNet with 4 stages). "resnet101s" (3-conv deep stem
    # 64/64/128) with RES5_MULTI_GRID [1, 2, 4] is the released R101c (detectron2 DeepLab ResNet-101) [D1].
    p.BACKBONE = "resnet101"
    # Dilations of res5's three 3×3 convs, stride kept (released R101c: [1, 2, 4]); [] = none
    p.RES5_MULTI_GRID = []
    # Local ImageNet weights of BACKBONE: a torchvision/timm state dict, or detectron2's R-103.pkl (R101c, the
    # released MaskFormer's) for "resnet101s"; "" = random init
    p.BACKBONE_WEIGHTS = ""
    p.ALLOW_RANDOM_BACKBONE = False  # True: stage 2 may train from a random backbone ("" BACKBONE_WEIGHTS; shapes, ours)
    p.BACKBONE_LR_MULTIPLIER = 0.1  # lr × of the backbone (released MaskFormer SOLVER.BACKBONE_MULTIPLIER 0.1)
    p.FREEZE_BACKBONE_BN = True  # frozen BatchNorm statistics and affine (detectron2's ResNet default, FrozenBN)
    p.NUM_QUERIES = 100  # N mask proposals [D1]
    p.HIDDEN_DIM = 256  # transformer decoder width [D1]
    p.NUM_HEADS = 8  # decoder attention heads [D1]
    p.DIM_FEEDFORWARD = 2048  # decoder FFN width [D1]
    p.DEC_LAYERS = 6  # decoder layers, each supervised (deep supervision) [D1]
    p.DROPOUT = 0.1  # decoder dropout on attention weights, residual branches and inside the FFN (MaskFormer's; spec silent)
    p.PIXEL_DECODER_DIM = 256  # FPN pixel decoder width (BasePixelDecoder, GroupNorm) [D1]
    p.MASK_DIM = 256  # per-pixel embedding width of the mask head [D1]
    # False: classes = the seen training classes (released: SimBaseline's ZeroShotMaskFormer, CE over seen
    # classes + no-object); True: one "object" class (the paper's class-agnostic MaskFormer) [D1].
    p.CLASS_AGNOSTIC = False
    # True: the mask losses only (no class cross-entropy, class matching cost 0), the paper's class-agnostic
    # stage 2 ("trained with the mask loss only"); needs CLASS_AGNOSTIC True. False: the released recipe.
    p.MASK_LOSS_ONLY = False
    # Classes of the class head (not class-agnostic); 0 = the training classes of DATASETS.TRAIN[0]. Stage 3
    # builds the same network, so its head must be the stage-2 checkpoint's size.
    p.NUM_CLASSES = 0
    p.NO_OBJECT_WEIGHT = 0.1  # CE weight of the no-object class [D1]
    p.CE_WEIGHT = 1.0  # class cross-entropy weight; the class matching cost stays 1 (D1's) [D1]
    p.MASK_WEIGHT = 20.0  # sigmoid focal mask loss weight (also the matching cost) [D1]
    p.DICE_WEIGHT = 1.0  # dice loss weight (also the matching cost) [D1]
    p.DEEP_SUPERVISION = True  # losses on every decoder layer's predictions [D1]


def _add_prompt_learning(d: CN) -> None:
    """MODEL.DEOP.PROMPT_LEARNING: stage 1 (MODEL.META_ARCHITECTURE "DeOPPromptLearner") [D5]; the CoOp
    context length is stage 3's MODEL.DEOP.TEXT_CTX (one key, so the stage-1 prompts fit stage 3)."""
    s = d.PROMPT_LEARNING = CN()
    # Pixels of a crop outside its region: "mean" (set to the pixel mean, i.e. 0 after normalisation: CLIP
    # sees the region alone) or "none" (the whole box). Ours; the spec names only "GT region crops" [D5].
    s.MASK_FILL = "mean"
    s.MIN_REGION_PIXELS = 16  # regions with fewer pixels (in the training crop) are not classified (ours)
    # Class logit scale of the crop classification (CLIP's logit scale, 100 for OpenAI CLIP; DeOP's D8 uses 100).
    s.LOGIT_SCALE = 100.0


def deop_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with MODEL.DEOP (for ``validate_config``), each message naming its key."""
    d, problems = cfg.MODEL.DEOP, []
    if (training and cfg.MODEL.META_ARCHITECTURE == "DeOP" and d.PROPOSALS == "maskformer" and not d.PROPOSAL_WEIGHTS
            and not cfg.MODEL.WEIGHTS):
        problems.append("MODEL.DEOP.PROPOSAL_WEIGHTS is empty; DeOP training with PROPOSALS 'maskformer' needs the "
                        "stage-2 checkpoint (configs/deop/proposals_*.yaml), or PROPOSALS 'gt' / 'clusters'")
    if (training and cfg.MODEL.META_ARCHITECTURE == "DeOPProposals" and not d.PROPOSAL_NET.BACKBONE_WEIGHTS
            and not cfg.MODEL.WEIGHTS and not d.PROPOSAL_NET.ALLOW_RANDOM_BACKBONE):
        problems.append("MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS is empty; the proposal network starts from ImageNet "
                        "weights: get detectron2's R-103.pkl (https://dl.fbaipublicfiles.com/detectron2/DeepLab/R-103.pkl, "
                        "BACKBONE 'resnet101s') or a torchvision/timm file of BACKBONE, or set "
                        "MODEL.DEOP.PROPOSAL_NET.ALLOW_RANDOM_BACKBONE True to train from random weights")
    if (training and cfg.MODEL.META_ARCHITECTURE == "DeOP" and not d.TEXT_PROMPT_WEIGHTS and not cfg.MODEL.WEIGHTS
            and not d.ALLOW_RANDOM_TEXT_PROMPTS):
        problems.append("MODEL.DEOP.TEXT_PROMPT_WEIGHTS is empty; DeOP stage 3 starts from the stage-1 text prompts: "
                        "train configs/deop/stage1_<dataset>.yaml and give its output/deop/prompts_<dataset>/"
                        "model_final.pth, or set MODEL.DEOP.ALLOW_RANDOM_TEXT_PROMPTS True to start from random ones")
    if d.PROPOSALS not in PROPOSAL_SOURCES:
        problems.append(f"MODEL.DEOP.PROPOSALS is '{d.PROPOSALS}'; use one of {list(PROPOSAL_SOURCES)}")
    if d.LOSS not in DEOP_LOSSES:
        problems.append(f"MODEL.DEOP.LOSS is '{d.LOSS}'; use one of {list(DEOP_LOSSES)}")
    if len(d.LOSS_WEIGHTS) != 2:
        problems.append(f"MODEL.DEOP.LOSS_WEIGHTS needs 2 values (focal, dice), got {list(d.LOSS_WEIGHTS)}")
    if int(d.NUM_PROPOSALS) < 1:
        problems.append(f"MODEL.DEOP.NUM_PROPOSALS is {d.NUM_PROPOSALS}; it must be >= 1")
    if d.GPS_MODE not in GPS_MODES:
        problems.append(f"MODEL.DEOP.GPS_MODE is '{d.GPS_MODE}'; use one of {list(GPS_MODES)}")
    problems += check_severance_alpha("MODEL.DEOP.GPS", d.GPS_LAYERS, d.GPS_ALPHA)
    p, s = d.PROPOSAL_NET, d.PROMPT_LEARNING
    for key in ("NUM_QUERIES", "HIDDEN_DIM", "NUM_HEADS", "DIM_FEEDFORWARD", "DEC_LAYERS", "PIXEL_DECODER_DIM", "MASK_DIM"):
        if int(p.get(key)) <= 0:
            problems.append(f"MODEL.DEOP.PROPOSAL_NET.{key} is {p.get(key)}; it must be > 0")
    if p.MASK_LOSS_ONLY and not p.CLASS_AGNOSTIC:
        problems.append("MODEL.DEOP.PROPOSAL_NET.MASK_LOSS_ONLY True needs CLASS_AGNOSTIC True (a class head trained "
                        "without a class loss would be random)")
    if any(int(m) < 1 for m in p.RES5_MULTI_GRID):
        problems.append(f"MODEL.DEOP.PROPOSAL_NET.RES5_MULTI_GRID {list(p.RES5_MULTI_GRID)}: dilations must be >= 1")
    if not 0.0 <= float(d.CAL_HEAT_DROPOUT) < 1.0:
        problems.append(f"MODEL.DEOP.CAL_HEAT_DROPOUT is {d.CAL_HEAT_DROPOUT}; it must lie in [0, 1)")
    heat_heads = int(d.CAL_HEATMAP_HEADS) or int(d.CAL_HEADS)
    if heat_heads < 1:
        problems.append(f"MODEL.DEOP.CAL_HEATMAP_HEADS is {d.CAL_HEATMAP_HEADS}; use 0 (= CAL_HEADS) or a positive count")
    if int(p.NUM_CLASSES) < 0:
        problems.append(f"MODEL.DEOP.PROPOSAL_NET.NUM_CLASSES is {p.NUM_CLASSES}; it must be >= 0 (0 = automatic)")
    if int(p.HIDDEN_DIM) % max(int(p.NUM_HEADS), 1):
        problems.append(f"MODEL.DEOP.PROPOSAL_NET.HIDDEN_DIM ({p.HIDDEN_DIM}) must be a multiple of NUM_HEADS ({p.NUM_HEADS})")
    if s.MASK_FILL not in MASK_FILLS:
        problems.append(f"MODEL.DEOP.PROMPT_LEARNING.MASK_FILL is '{s.MASK_FILL}'; use one of {list(MASK_FILLS)}")
    return problems
