"""MODEL.CLIPTRASE: CLIPtrase's keys (MODEL.META_ARCHITECTURE "CLIPtrase", training-free; seed 001, SEED_SYSTEMS §2).

Values are the supplement's; where its official script differs, configs/cliptrase/ say which they follow
[S2.2]. The tower (model, weights, text templates, positional resize) is MODEL.CLIP's; Base-CLIPtrase.yaml
sets the official code's 80 ImageNet templates and bicubic (+0.1) resize.
"""
from detectron2.config import CfgNode as CN

__all__ = ["CLIPTRASE_VOTES", "add_cliptrase_config", "cliptrase_config_problems"]

CLIPTRASE_VOTES = ("hard", "soft")


def add_cliptrase_config(cfg: CN) -> None:
    """Add MODEL.CLIPTRASE.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.CLIPTRASE = CN()
    c.CORRELATION_LAYER = -2  # block whose q/k/v give the self-correlation R (T1, "11th block")
    c.ATTENTION_LAYER = -1  # block whose attention is replaced by self-correlation attention (T2)
    c.ATTENTION_BRANCHES = ["q", "k", "v"]  # summed softmax(a a^T) branches; ["q","k"] = SCLIP; [] = plain CLIP
    c.CLUSTER = True  # DBSCAN regions + voting (T6-T9); False = per-pixel argmax (CLIP / SCLIP rows)
    c.DBSCAN_EPS = 0.7  # DBSCAN radius on rows of the denoised correlation (T7; script: 1.1 at 336)
    c.DBSCAN_MIN_SAMPLES = 3  # DBSCAN min_samples, the point itself included (T7; script: 7 at 336)
    c.DBSCAN_SCALE = "fixed"  # "fixed" or "grid": eps*sqrt(hw/196), round(min*hw/196) (ours)
    c.SMOOTH_RATIO = 4  # cluster maps upsampled x r before the median filter (T8)
    c.MEDIAN_SIZE = 7  # median filter size on the upsampled cluster maps, 2r-1 (T8)
    c.VOTE = "hard"  # "hard" (script: per-region majority) or "soft" (D2 code: region-mean logits) (T9)
    c.IMAGE_LEVEL_REWEIGHT = False  # logits x [CLS]-text similarity (T5', the script's VOC20 rule)
    c.BACKGROUND_CLASS = "background"  # vocabulary entry that stands for BACKGROUND_WORDS (T10)
    # words whose embeddings all vote for BACKGROUND_CLASS (T4/T10); [] = the test dataset's background_names
    # metadata, or the class name itself
    c.BACKGROUND_WORDS = []


def cliptrase_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with MODEL.CLIPTRASE (for ``validate_config``), each message naming its key."""
    c, problems = cfg.MODEL.CLIPTRASE, []
    if c.VOTE not in CLIPTRASE_VOTES:
        problems.append(f"MODEL.CLIPTRASE.VOTE is '{c.VOTE}'; use one of {list(CLIPTRASE_VOTES)}")
    if c.DBSCAN_SCALE not in ("fixed", "grid"):
        problems.append(f"MODEL.CLIPTRASE.DBSCAN_SCALE is '{c.DBSCAN_SCALE}'; use 'fixed' or 'grid'")
    bad = [b for b in c.ATTENTION_BRANCHES if b not in ("q", "k", "v")]
    if bad:
        problems.append(f"MODEL.CLIPTRASE.ATTENTION_BRANCHES has {bad}; use entries of ['q', 'k', 'v']")
    return problems
