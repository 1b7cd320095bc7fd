"""Config keys of DeOP's stage 1 (prompt learning on region crops) and stage 2 (mask proposals).

DeOP (seed 004, SEED_SYSTEMS §4) trains in three stages; stage 3 (``MODEL.DEOP``) is in
``config_deop.py``. Values are the released recipe's where the spec names them (D1, D5, §4.2); the rest
say where they come from. The CLIP tower keys stay ``MODEL.LDVC.CLIP_*``; the CoOp context length is stage
3's ``MODEL.DEOP.TEXT_CTX`` (one key, so the stage-1 prompts fit stage 3).
"""
from detectron2.config import CfgNode as CN

__all__ = ["MASK_FILLS", "add_deop_proposals_config", "deop_proposals_config_problems"]

MASK_FILLS = ("mean", "none")  # MODEL.DEOP_PROMPT_LEARNING.MASK_FILL; also checked by DeOPPromptLearner


def add_deop_proposals_config(cfg: CN) -> None:
    """Add MODEL.DEOP_PROPOSALS (stage 2) and MODEL.DEOP_PROMPT_LEARNING (stage 1)."""
    p = cfg.MODEL.DEOP_PROPOSALS = CN()
    # timm ResNet of the proposal network ("resnet50", "resnet101", any timm ResNet with 4 stages). The
    # released R101c (DeepLab 3-conv stem, multigrid) is not available: detectron2.projects.deeplab is not
    # in the pip detectron2, and its ImageNet weights (R-103.pkl) are not torchvision/timm weights [D1].
    p.BACKBONE = "resnet101"
    p.BACKBONE_WEIGHTS = ""  # local torchvision/timm ImageNet state dict of BACKBONE ("" = random init)
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
    # Classes of the class head (not class-agnostic); 0 = the training classes of DATASETS.TRAIN[0]. Stage 3
    # builds the same network, so its head must be the stage-2 checkpoint's size.
    p.NUM_CLASSES = 0
    p.NO_OBJECT_WEIGHT = 0.1  # CE weight of the no-object class [D1]
    p.CE_WEIGHT = 1.0  # class cross-entropy weight; the class matching cost stays 1 (D1's) [D1]
    p.MASK_WEIGHT = 20.0  # sigmoid focal mask loss weight (also the matching cost) [D1]
    p.DICE_WEIGHT = 1.0  # dice loss weight (also the matching cost) [D1]
    p.DEEP_SUPERVISION = True  # losses on every decoder layer's predictions [D1]

    s = cfg.MODEL.DEOP_PROMPT_LEARNING = CN()
    # Pixels of a crop outside its region: "mean" (set to the pixel mean, i.e. 0 after normalisation: CLIP
    # sees the region alone) or "none" (the whole box). Ours; the spec names only "GT region crops" [D5].
    s.MASK_FILL = "mean"
    s.MIN_REGION_PIXELS = 16  # regions with fewer pixels (in the training crop) are not classified (ours)
    # Class logit scale of the crop classification (CLIP's logit scale, 100 for OpenAI CLIP; DeOP's D8 uses 100).
    s.LOGIT_SCALE = 100.0


def deop_proposals_config_problems(cfg: CN) -> list:
    """What is wrong with the keys above (for ``validate_config``), each naming its key."""
    p, s = cfg.MODEL.DEOP_PROPOSALS, cfg.MODEL.DEOP_PROMPT_LEARNING
    problems = []
    for key in ("NUM_QUERIES", "HIDDEN_DIM", "NUM_HEADS", "DIM_FEEDFORWARD", "DEC_LAYERS", "PIXEL_DECODER_DIM", "MASK_DIM"):
        if int(p.get(key)) <= 0:
            problems.append(f"MODEL.DEOP_PROPOSALS.{key} is {p.get(key)}; it must be > 0")
    if int(p.NUM_CLASSES) < 0:
        problems.append(f"MODEL.DEOP_PROPOSALS.NUM_CLASSES is {p.NUM_CLASSES}; it must be >= 0 (0 = automatic)")
    if int(p.HIDDEN_DIM) % max(int(p.NUM_HEADS), 1):
        problems.append(f"MODEL.DEOP_PROPOSALS.HIDDEN_DIM ({p.HIDDEN_DIM}) must be a multiple of NUM_HEADS ({p.NUM_HEADS})")
    if s.MASK_FILL not in MASK_FILLS:
        problems.append(f"MODEL.DEOP_PROMPT_LEARNING.MASK_FILL is '{s.MASK_FILL}'; use one of {list(MASK_FILLS)}")
    return problems
