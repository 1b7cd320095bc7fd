"""Config keys of CLIP-to-Seg distillation (MODEL.META_ARCHITECTURE "C2S"; seed 003, SEED_SYSTEMS §3).

The paper defers most settings to a supplement nobody has; every value marked (ours) is a choice,
listed with its reason in docs/c2s.md. [Cn] names the step of SEED_SYSTEMS §3.1.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_c2s_config", "c2s_config_problems"]


def add_c2s_config(cfg: CN) -> None:
    """Add MODEL.C2S (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    cfg.MODEL.C2S = CN()
    # Student from ldvc_d2.modeling.c2s.students (segformer_b0..b5, setr_b, segformer_tiny, setr_tiny);
    # it ends in a 1x1 projection to CLIP's embedding width [C1]
    cfg.MODEL.C2S.STUDENT = "segformer_b4"
    # Student backbone weights: "" = random init; SegFormer: a local Hugging Face folder or hub id of the
    # MiT encoder (e.g. nvidia/mit-b4); SETR: a local timm checkpoint file or a timm pretrained name
    cfg.MODEL.C2S.STUDENT_WEIGHTS = ""
    cfg.MODEL.C2S.DROP_PATH = 0.1  # stochastic depth of the student backbone (SegFormer/SETR defaults in MMSeg)
    cfg.MODEL.C2S.TAU = 0.07  # InfoNCE temperature of both distillation losses (ours; eq. 2/4 print no value) [C6, C8]
    cfg.MODEL.C2S.BANK_SIZE = 24  # FIFO bank of teacher [CLS] tokens, gathered over processes (paper: 24) [C6]
    cfg.MODEL.C2S.TEACHER_GLOBAL_SIZE = 224  # C_g from the image resized to this (ours: CLIP's size); 0 = crop's pass [C1]
    cfg.MODEL.C2S.LOCAL_CROP_SIZE = 224  # side of the masked region crops the teacher encodes (ours) [C4]
    cfg.MODEL.C2S.WINDOW_SIZES = [2, 4, 8]  # seed windows O in teacher tokens, stride round(o/2) (ours) [C2]
    cfg.MODEL.C2S.KMEANS_ITERS = 10  # cosine K-Means iterations started from the seeds (ours) [C3]
    cfg.MODEL.C2S.MERGE_THRESHOLD = 0.9  # clusters whose centroids have cosine > this are merged (ours) [C3]
    cfg.MODEL.C2S.MIN_CLUSTER = 8  # latent clusters with fewer teacher tokens are dropped (ours) [C3]
    cfg.MODEL.C2S.MAX_LATENT = 8  # at most this many latent classes per image, the largest (ours: bounds teacher crops) [C3]
    cfg.MODEL.C2S.ALPHA = 1.0  # seen logits alpha * F^T A_s, F unnormalised as printed (ours) [C10]
    cfg.MODEL.C2S.BETA = 10.0  # latent logits beta * cos(F, A'_u) (ours) [C10]
    cfg.MODEL.C2S.DECODER_LAYERS = 1  # transformer decoder layers of latent embedding generation (ours) [C9]
    cfg.MODEL.C2S.DECODER_HEADS = 8  # its attention heads (ours)
    cfg.MODEL.C2S.DECODER_FFN = 2048  # its feed-forward width (ours)
    cfg.MODEL.C2S.DECODER_DROPOUT = 0.1  # its dropout (torch's TransformerDecoderLayer default)
    cfg.MODEL.C2S.LOSS_WEIGHTS = [1.0, 1.0, 1.0]  # weights of L_g, L_l, L_p (eq. 6: unit) [C12]
    cfg.MODEL.C2S.CE_WEIGHT = 1.0  # cross-entropy inside L_p next to focal+dice (MODEL.SEGMENTOR.LOSS.*) (eq. 5) [C11]
    # Ablation switches (paper Table 3): all False = the seen-only baseline (CE + NEL over seen classes)
    cfg.MODEL.C2S.GLOBAL_DISTILL = True  # L_g [C5-C6]
    cfg.MODEL.C2S.LOCAL_DISTILL = True  # L_l over the regions of the pseudo mask [C7-C8]
    cfg.MODEL.C2S.LATENT_EMBEDDINGS = True  # latent classes as extra classes of L_p [C9-C11]


def c2s_config_problems(cfg: CN, training: bool) -> list:
    """Values of MODEL.C2S that cannot work, as messages for ``validate_config``."""
    c = cfg.MODEL.C2S
    problems = []
    if len(c.LOSS_WEIGHTS) != 3:
        problems.append(f"MODEL.C2S.LOSS_WEIGHTS must have 3 entries (global, local, pixel), got {list(c.LOSS_WEIGHTS)}")
    if not c.WINDOW_SIZES or min(c.WINDOW_SIZES) < 1:
        problems.append(f"MODEL.C2S.WINDOW_SIZES must be positive token counts, got {list(c.WINDOW_SIZES)}")
    if c.TAU <= 0 or c.BANK_SIZE < 1:
        problems.append(f"MODEL.C2S.TAU ({c.TAU}) must be > 0 and MODEL.C2S.BANK_SIZE ({c.BANK_SIZE}) >= 1")
    if c.LOCAL_CROP_SIZE < 1 or c.TEACHER_GLOBAL_SIZE < 0:
        problems.append(f"MODEL.C2S.LOCAL_CROP_SIZE ({c.LOCAL_CROP_SIZE}) must be >= 1 and TEACHER_GLOBAL_SIZE "
                        f"({c.TEACHER_GLOBAL_SIZE}) >= 0")
    return problems
