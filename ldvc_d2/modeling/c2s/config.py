"""Config keys of CLIP-to-Seg distillation (MODEL.META_ARCHITECTURE "C2S"; seed 003, SEED_SYSTEMS §3).

The paper defers most settings to a supplement nobody has; every value marked (ours) is a choice,
listed with its reason in docs/c2s.md. [Cn] names the step of SEED_SYSTEMS §3.1.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_c2s_config", "c2s_config_problems", "paper_weights_hint"]


def add_c2s_config(cfg: CN) -> None:
    """Add MODEL.C2S (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    cfg.MODEL.C2S = CN()
    # Student from ldvc_d2.modeling.c2s.students (segformer_b0..b5, setr_b, segformer_tiny, setr_tiny);
    # it ends in a 1x1 projection to CLIP's embedding width [C1]
    cfg.MODEL.C2S.STUDENT = "segformer_b4"
    # Student backbone weights (paper §4: ImageNet-pretrained students): SegFormer: a Hugging Face hub id or
    # local folder of the MiT encoder (nvidia/mit-b4); SETR: a timm pretrained tag
    # (vit_base_patch16_384.orig_in21k_ft_in1k) or a local checkpoint file; "" = random init (see below)
    cfg.MODEL.C2S.STUDENT_WEIGHTS = ""
    # True: an empty STUDENT_WEIGHTS trains from random weights (the shapes configs, tests); False: training
    # refuses to start without student weights (ours: the paper's students are ImageNet-pretrained)
    cfg.MODEL.C2S.ALLOW_RANDOM_STUDENT = False
    # lr multiplier of the student's decode head and of the latent decoder (MMSeg defaults: head lr_mult 10;
    # the latent decoder counts as head, ours) [C12]
    cfg.MODEL.C2S.HEAD_LR_MULTIPLIER = 10.0
    cfg.MODEL.C2S.DROP_PATH = 0.1  # stochastic depth of the student backbone (SegFormer/SETR defaults in MMSeg)
    cfg.MODEL.C2S.TAU = 0.07  # InfoNCE temperature of both distillation losses (ours; eq. 2/4 print no value) [C6, C8]
    cfg.MODEL.C2S.BANK_SIZE = 24  # FIFO bank of teacher [CLS] tokens, gathered over processes (paper: 24) [C6]
    cfg.MODEL.C2S.TEACHER_GLOBAL_SIZE = 224  # C_g from the image resized to this (ours: CLIP's size); 0 = crop's pass [C1]
    cfg.MODEL.C2S.LOCAL_CROP_SIZE = 224  # side of the masked region crops the teacher encodes (ours) [C4]
    cfg.MODEL.C2S.WINDOW_SIZES = [2, 4, 8]  # seed windows O in teacher tokens, stride round(o/2) (ours) [C2]
    cfg.MODEL.C2S.KMEANS_ITERS = 10  # cosine K-Means iterations started from the seeds (ours) [C3]
    # K-Means clusters are merged while their similarity exceeds this (ours, from tools/c2s_mining_sweep.py) [C3]
    cfg.MODEL.C2S.MERGE_THRESHOLD = 0.1
    # "average": greedy average linkage (mean pairwise cosine of the clusters' tokens); "single": connected
    # components of {centroid cosine > threshold} (ours; docs/c2s.md "Latent mining") [C3]
    cfg.MODEL.C2S.MERGE_LINKAGE = "average"
    # subtract the mean of the image's valid teacher tokens before mining (ours: CLIP tokens share one
    # direction, cosine ~0.8 between any two; docs/c2s.md) [C2-C3]
    cfg.MODEL.C2S.CENTER_TOKENS = True
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
    if c.MERGE_LINKAGE not in ("average", "single"):
        problems.append(f"MODEL.C2S.MERGE_LINKAGE must be 'average' or 'single', got '{c.MERGE_LINKAGE}'")
    if (training and cfg.MODEL.META_ARCHITECTURE == "C2S" and not c.STUDENT_WEIGHTS and not cfg.MODEL.WEIGHTS
            and not c.ALLOW_RANDOM_STUDENT):
        problems.append(f"MODEL.C2S.STUDENT_WEIGHTS is empty: the paper's students start from ImageNet weights "
                        f"({paper_weights_hint(c.STUDENT)}); or set MODEL.C2S.ALLOW_RANDOM_STUDENT True to train "
                        "from random weights")
    return problems


def paper_weights_hint(student: str) -> str:
    """What MODEL.C2S.STUDENT_WEIGHTS should name for ``student`` (the refusal's advice)."""
    if student.startswith("segformer_b"):
        variant = student.split("_")[1]
        return (f"set it to nvidia/mit-{variant} or a local folder of it: huggingface-cli download "
                f"nvidia/mit-{variant} --local-dir <folder>")
    if student.startswith("setr_"):
        return ("set it to the timm tag vit_base_patch16_384.orig_in21k_ft_in1k (the ImageNet-21k ViT-B/16 that "
                "SETR loads) or a local .pth/.safetensors file of it")
    return "set it to a checkpoint of this student's ImageNet-pretrained backbone"
