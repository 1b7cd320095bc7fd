"""MODEL.CLIP: the open_clip towers every method builds, and the options of the prompted CLIP backbone.

Read by :class:`~ldvc_d2.modeling.backbone.PromptedCLIPBackbone` (LDVC, ZegCLIP) and by the towers CLIPtrase,
DeOP and C2S build. Every key has a one-line comment; configs/README.md lists who reads it and where its value
comes from ([n.m] = DESIGN.md section).
"""
from detectron2.config import CfgNode as CN

from .severance import check_severance_alpha
from .vision import POS_INTERPOLATIONS

__all__ = ["add_clip_config", "clip_config_problems"]


def add_clip_config(cfg: CN) -> None:
    """Add MODEL.CLIP.* (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    c = cfg.MODEL.CLIP = CN()
    c.MODEL = "ViT-B-16"  # open_clip model name (any open_clip ViT, e.g. ViT-L-14)
    c.PRETRAINED = "openai"  # open_clip pretrained tag, local checkpoint path, or "" (random init)
    c.CACHE_DIR = ""  # where open_clip caches downloaded weights ("" = its default)
    # How CLIP's positional grid is resized to other inputs: "bilinear" (LDVC/ZegCLIP), "bicubic" (CLIPtrase's
    # official code: scale factor (n + 0.1) / 14) or "bicubic_size" (DeOP's released code: bicubic to the size).
    c.POS_INTERPOLATION = "bilinear"
    # The template a class name is written into: the frozen text of C2S and CLIPtrase's single-template
    # setting, and the hand-crafted init of the prompted text encoder (its words before {} init the prompts)
    c.TEXT_TEMPLATE = "this is a photo of a {}."
    # Frozen text: class embedding = normalised mean over these templates (CLIP's ensembling; ZegCLIP's
    # COCO-Stuff baseline averages 15, CLIPtrase 80); entries may be set names of clip/templates.py
    # ("imagenet80", "vild14"); [] = TEXT_TEMPLATE alone. The prompted backbone needs TEXT_PROMPTS 0 for it.
    c.TEXT_TEMPLATES = []
    # Deep (prepended) prompts of the prompted CLIP backbone (LDVC's VLPT, ZegCLIP's VPT) [1.1]
    c.VISUAL_PROMPTS = 40  # visual prompt tokens per layer: 40 VOC, 100 COCO-Stuff [1.1]; 0 = none
    c.TEXT_PROMPTS = 6  # text prompt tokens per layer [1.1]; 0 = frozen text
    c.TEXT_PROMPT_INIT = "template"  # "template" (TEXT_TEMPLATE's words before {}, Table 6) or "random"
    # ZegCLIP's visual prompt variant (baseline, Tables 4/7): one shared Linear(width, width) + dropout on
    # every layer's prompts, and a LayerNorm before ln_post. LDVC uses plain deep prompts (all False).
    c.VISUAL_PROMPT_PROJECTION = False  # ZegCLIP's shared prompt projection
    c.VISUAL_PROMPT_DROPOUT = 0.1  # dropout after the prompt projection (ZegCLIP: 0.1)
    c.VISUAL_FINAL_NORM = False  # ZegCLIP's extra LayerNorm before ln_post
    # DeOP's pure patch severance (eq. 2) as an option of the prompted backbone: blocks (negative = from the
    # end), [] = off; α per layer or one for all. DeOP itself reads MODEL.DEOP.GPS_*.
    c.PATCH_SEVERANCE_LAYERS = []
    c.PATCH_SEVERANCE_ALPHA = [1.0]  # α per PATCH_SEVERANCE_LAYERS entry, or one for all (eq. 2)


def clip_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with MODEL.CLIP (for ``validate_config``), each message naming its key."""
    c, problems = cfg.MODEL.CLIP, []
    if c.POS_INTERPOLATION not in POS_INTERPOLATIONS:
        problems.append(f"MODEL.CLIP.POS_INTERPOLATION is '{c.POS_INTERPOLATION}'; use one of {list(POS_INTERPOLATIONS)}")
    if int(c.VISUAL_PROMPTS) < 0 or int(c.TEXT_PROMPTS) < 0:
        problems.append(f"MODEL.CLIP.VISUAL_PROMPTS / TEXT_PROMPTS are {c.VISUAL_PROMPTS} / {c.TEXT_PROMPTS}; both must be >= 0")
    if c.TEXT_PROMPT_INIT not in ("template", "random"):
        problems.append(f"MODEL.CLIP.TEXT_PROMPT_INIT is '{c.TEXT_PROMPT_INIT}'; use 'template' or 'random'")
    problems += check_severance_alpha("MODEL.CLIP.PATCH_SEVERANCE", c.PATCH_SEVERANCE_LAYERS, c.PATCH_SEVERANCE_ALPHA)
    return problems
