"""MODEL.LDVC: LDVC's own keys: the V_j taps of eq. (4) and the LCTD decoder (MODEL.LDVC.LCTD, eqs. 3-13).

The prompts LDVC trains are the prompted CLIP backbone's (MODEL.CLIP.VISUAL_PROMPTS / TEXT_PROMPTS); its
loss, classes, calibration and inference are the shared segmentor's (MODEL.SEGMENTOR.*). The LCTD head also
runs under ZegCLIP's meta-architecture in the decoder ablations (Table 7), still configured here.
"""
from detectron2.config import CfgNode as CN

from .lcsa import LCSA_SCALES

__all__ = ["add_ldvc_method_config", "ldvc_config_problems"]

INTERMEDIATE_NORMS = ("none", "ln_post", "learnable", "l2")


def add_ldvc_method_config(cfg: CN) -> None:
    """Add MODEL.LDVC.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.LDVC = CN()
    # 0-based image-encoder blocks giving V_j, one per LCTD block (eq. 4); [] = auto: evenly spaced from
    # the middle block to the last (ViT-B/16, 2 blocks: [6, 11]). The paper does not say which.
    c.INTERMEDIATE_LAYERS = []
    # Scale of V_j before eq. (4)'s Conv1x1 (paper silent; raw ViT tokens have norms far above the
    # L2-normalised V_l): "none" (raw tokens), "ln_post" (CLIP's frozen ln_post, no proj), "learnable" (one
    # trainable LayerNorm per tap, init 1/0) or "l2" (unit norm per token, as V_l). Default "learnable" (ours,
    # as ZegCLIP/SegViT normalise their intermediate features): the best mean S/U/hIoU of the four on the
    # shapes benchmark, 3 seeds (docs/shapes_benchmark.md; its margin over "none" is within the seed spread).
    c.INTERMEDIATE_NORM = "learnable"

    t = c.LCTD = CN()  # the LCTD head (MODEL.SEM_SEG_HEAD.NAME "LCTDHead") [1.2]
    t.NUM_BLOCKS = 2  # N decoder blocks (Table 9) [1.2]
    t.WINDOW_SIZE = 4  # LCSA window side n, in tokens (eq. 8)
    t.TOPK_WINDOWS = 16  # m routed windows per window (eq. 10, Table 8)
    t.SELF_ATTENTION = "lcsa"  # "lcsa" or "global" (plain self-attention, Table 4 ablation)
    t.NUM_HEADS = 8  # heads of LCSA and cross-attention (paper silent; ZegCLIP's decoder uses 8)
    t.MLP_RATIO = 4.0  # hidden width of the block MLP / d (eq. 7; paper silent)
    # Paper silent; ZegCLIP's decoder (torch TransformerDecoderLayer default, its attn_drop): 0.1 / 0.1.
    t.DROPOUT = 0.1  # dropout on the LCSA / cross-attention outputs and in the MLP
    t.ATTN_DROPOUT = 0.1  # dropout on the LCSA and cross-attention softmax weights
    # LCSA softmax scale (eq. 12): "full_width" = 1/sqrt(d) as written (and BiFormer, with any number of
    # heads), "head_dim" = 1/sqrt(d / NUM_HEADS) (the usual multi-head scale).
    t.SCALE = "full_width"
    # Floats of one head's gathered keys and values per chunk of LCSA's routed step (memory / speed only;
    # results do not depend on it beyond float rounding). Larger chunks mean fewer passes.
    t.CHUNK_ELEMENTS = 2 ** 18
    # Linear weights of the LCTD head (text adapter included): "trunc_normal" (std 0.02, bias 0; ZegCLIP's
    # decoder init, paper silent) or "torch" (PyTorch's defaults). The eq. (4) Conv1x1 stays zero-initialised.
    t.WEIGHT_INIT = "trunc_normal"
    t.TEXT_ADAPTER = True  # T_new = Proj([T * V_g; T]) (eq. 3); False uses T directly


def ldvc_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with MODEL.LDVC (for ``validate_config``), each message naming its key."""
    c, problems = cfg.MODEL.LDVC, []
    t = c.LCTD
    if c.INTERMEDIATE_NORM not in INTERMEDIATE_NORMS:
        problems.append(f"MODEL.LDVC.INTERMEDIATE_NORM is '{c.INTERMEDIATE_NORM}'; use one of {list(INTERMEDIATE_NORMS)}")
    if t.SELF_ATTENTION not in ("lcsa", "global"):
        problems.append(f"MODEL.LDVC.LCTD.SELF_ATTENTION is '{t.SELF_ATTENTION}'; use 'lcsa' or 'global'")
    if t.SCALE not in LCSA_SCALES:
        problems.append(f"MODEL.LDVC.LCTD.SCALE is '{t.SCALE}'; use one of {list(LCSA_SCALES)}")
    if t.WEIGHT_INIT not in ("trunc_normal", "torch"):
        problems.append(f"MODEL.LDVC.LCTD.WEIGHT_INIT is '{t.WEIGHT_INIT}'; use 'trunc_normal' or 'torch'")
    for key in ("NUM_BLOCKS", "WINDOW_SIZE", "TOPK_WINDOWS", "NUM_HEADS", "CHUNK_ELEMENTS"):
        if int(t.get(key)) < 1:
            problems.append(f"MODEL.LDVC.LCTD.{key} is {t.get(key)}; it must be >= 1")
    return problems
