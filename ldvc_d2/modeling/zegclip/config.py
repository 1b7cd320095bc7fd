"""MODEL.ZEGCLIP: the keys of ZegCLIP's decoder (MODEL.SEM_SEG_HEAD.NAME "ZegCLIPHead", the paper's baseline) [DESIGN 2].

ZegCLIP's visual prompt variant is an option of the prompted CLIP backbone (MODEL.CLIP.VISUAL_PROMPT_*).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_zegclip_config", "zegclip_config_problems"]


def add_zegclip_config(cfg: CN) -> None:
    """Add MODEL.ZEGCLIP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    z = cfg.MODEL.ZEGCLIP = CN()
    z.NUM_LAYERS = 3  # decoder layers; masks come from the last one
    z.NUM_HEADS = 8  # cross-attention heads
    z.MLP_DIM = 2048  # feed-forward hidden width (4 x d)
    z.DROPOUT = 0.1  # residual / feed-forward dropout (torch TransformerDecoderLayer default)
    z.ATTN_DROPOUT = 0.1  # dropout on the cross-attention weights
    # ZegCLIP's layers subclass torch's TransformerDecoderLayer and keep its self-attention and first
    # norm, which forward never calls. True keeps these (gradient-free) weights so the trainable count
    # matches the official 13.8M/14.6M; False leaves them out (3.15M fewer at d 512).
    z.UNUSED_SELF_ATTENTION = True


def zegclip_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with MODEL.ZEGCLIP (for ``validate_config``), each message naming its key."""
    z, problems = cfg.MODEL.ZEGCLIP, []
    for key in ("NUM_LAYERS", "NUM_HEADS", "MLP_DIM"):
        if int(z.get(key)) < 1:
            problems.append(f"MODEL.ZEGCLIP.{key} is {z.get(key)}; it must be >= 1")
    return problems
