"""Config keys of ldvc_d2. Every key added here has a one-line comment; DESIGN/paper references in []."""
import yaml
from detectron2.config import CfgNode as CN

from .config_inference import add_inference_config, inference_config_problems
from .config_deop import add_deop_config, deop_config_problems
from .config_deop_proposals import add_deop_proposals_config, deop_proposals_config_problems
from .config_c2s import add_c2s_config, c2s_config_problems

__all__ = ["add_ldvc_config", "load_config_file", "validate_config"]


def add_ldvc_config(cfg: CN) -> None:
    """Add the LDVC keys to a detectron2 config (call before merge_from_file)."""
    cfg.MODEL.META_ARCHITECTURE = "LDVC"
    cfg.MODEL.BACKBONE.NAME = "PromptedCLIPBackbone"
    # ZegCLIP normalises with ImageNet statistics (RGB, 0-255), not CLIP's; CLIP's are
    # [122.771, 116.746, 104.094] / [68.501, 66.632, 70.323] [DESIGN 1.3].
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    # False: MODEL.WEIGHTS must hold every trainable tensor with its shape and nothing else (error naming
    # the keys); True: load the matching part with a warning. Frozen CLIP tensors may always be absent.
    cfg.MODEL.WEIGHTS_PARTIAL_LOAD = False

    cfg.MODEL.LDVC = CN()
    cfg.MODEL.LDVC.CLIP_MODEL = "ViT-B-16"  # open_clip model name (any open_clip ViT, e.g. ViT-L-14)
    cfg.MODEL.LDVC.CLIP_PRETRAINED = "openai"  # open_clip pretrained tag, local checkpoint path, or "" (random init)
    cfg.MODEL.LDVC.CLIP_CACHE_DIR = ""  # where open_clip caches downloaded weights ("" = its default)
    cfg.MODEL.LDVC.VISUAL_PROMPTS = 40  # deep visual prompt tokens per layer: 40 VOC, 100 COCO-Stuff [1.1]
    cfg.MODEL.LDVC.TEXT_PROMPTS = 6  # deep text prompt tokens per layer [1.1]
    cfg.MODEL.LDVC.TEXT_PROMPT_INIT = "template"  # "template" (hand-crafted, Table 6) or "random"
    cfg.MODEL.LDVC.TEXT_PROMPT_TEMPLATE = "this is a photo of a {}."  # its words before {} init the prompts
    # Frozen text only (TEXT_PROMPTS 0): class embedding = normalised mean over these templates (CLIP's
    # ensembling; ZegCLIP's COCO-Stuff baseline averages 15); entries may be set names of clip/templates.py;
    # [] = TEXT_PROMPT_TEMPLATE alone.
    cfg.MODEL.LDVC.TEXT_TEMPLATES = []
    # 0-based image-encoder blocks giving V_j, one per LCTD block (eq. 4); [] = auto: evenly spaced from
    # the middle block to the last (ViT-B/16, 2 blocks: [6, 11]). The paper does not say which.
    cfg.MODEL.LDVC.INTERMEDIATE_LAYERS = []
    # Scale of V_j before eq. (4)'s Conv1x1 (paper silent; raw ViT tokens have norms far above the
    # L2-normalised V_l): "none" (raw tokens), "ln_post" (CLIP's frozen ln_post, no proj), "learnable" (one
    # trainable LayerNorm per tap, init 1/0) or "l2" (unit norm per token, as V_l). Default "learnable" (ours,
    # as ZegCLIP/SegViT normalise their intermediate features): the best mean S/U/hIoU of the four on the
    # shapes benchmark, 3 seeds (docs/shapes_benchmark.md; its margin over "none" is within the seed spread).
    cfg.MODEL.LDVC.INTERMEDIATE_NORM = "learnable"
    cfg.MODEL.LDVC.CLASS_EMBEDDINGS = "text"  # "text" (CLIP) or "random" (no-language control: names -> random vectors)
    cfg.MODEL.LDVC.TRAINING_CLASSES = "seen"  # "seen" (inductive), "all" (transductive / fully supervised)
    cfg.MODEL.LDVC.SEEN_SCORE_CALIBRATION = 0.1  # subtracted from seen-class sigmoid scores at test [1.4]
    # Transductive self-training [1.5]: with TRAINING_CLASSES "all", pixels whose label is an unseen class
    # of DATASETS.TRAIN[0] get the arg-max unseen class of the (detached) prediction as label, online.
    cfg.MODEL.LDVC.SELF_TRAINING = False
    # ZegCLIP's visual prompt variant (baseline, Tables 4/7): one shared Linear(width, width) + dropout on
    # every layer's prompts, and a LayerNorm before ln_post. LDVC uses plain deep prompts (all False).
    cfg.MODEL.LDVC.VISUAL_PROMPT_PROJECTION = False
    cfg.MODEL.LDVC.VISUAL_PROMPT_DROPOUT = 0.1  # dropout after the prompt projection (ZegCLIP: 0.1)
    cfg.MODEL.LDVC.VISUAL_FINAL_NORM = False

    cfg.MODEL.LDVC.LOSS = CN()
    cfg.MODEL.LDVC.LOSS.FOCAL_WEIGHT = 100.0  # sigmoid focal loss weight [1.3]
    cfg.MODEL.LDVC.LOSS.DICE_WEIGHT = 1.0  # dice loss weight [1.3]
    cfg.MODEL.LDVC.LOSS.FOCAL_ALPHA = 0.25  # focal loss alpha (positives' weight)
    cfg.MODEL.LDVC.LOSS.FOCAL_GAMMA = 2.0  # focal loss focusing exponent
    cfg.MODEL.LDVC.LOSS.IGNORE_AS_NEGATIVE = True  # 255 pixels count as negatives in focal/dice (ZegCLIP)

    cfg.MODEL.LDVC.INFERENCE = CN()
    cfg.MODEL.LDVC.INFERENCE.MODE = "slide"  # "slide" (sliding window) or "whole" [1.4]
    cfg.MODEL.LDVC.INFERENCE.CROP_SIZE = 512  # sliding-window size (pixels)
    cfg.MODEL.LDVC.INFERENCE.STRIDE = 426  # sliding-window stride (pixels)

    cfg.MODEL.LCTD = CN()
    cfg.MODEL.LCTD.NUM_BLOCKS = 2  # N decoder blocks (Table 9) [1.2]
    cfg.MODEL.LCTD.WINDOW_SIZE = 4  # LCSA window side n, in tokens (eq. 8)
    cfg.MODEL.LCTD.TOPK_WINDOWS = 16  # m routed windows per window (eq. 10, Table 8)
    cfg.MODEL.LCTD.SELF_ATTENTION = "lcsa"  # "lcsa" or "global" (plain self-attention, Table 4 ablation)
    cfg.MODEL.LCTD.NUM_HEADS = 8  # heads of LCSA and cross-attention (paper silent; ZegCLIP's decoder uses 8)
    cfg.MODEL.LCTD.MLP_RATIO = 4.0  # hidden width of the block MLP / d (eq. 7; paper silent)
    # Paper silent; ZegCLIP's decoder (torch TransformerDecoderLayer default, its attn_drop): 0.1 / 0.1.
    cfg.MODEL.LCTD.DROPOUT = 0.1  # dropout on the LCSA / cross-attention outputs and in the MLP
    cfg.MODEL.LCTD.ATTN_DROPOUT = 0.1  # dropout on the LCSA and cross-attention softmax weights
    # LCSA softmax scale (eq. 12): "full_width" = 1/sqrt(d) as written (and BiFormer, with any number of
    # heads), "head_dim" = 1/sqrt(d / NUM_HEADS) (the usual multi-head scale).
    cfg.MODEL.LCTD.SCALE = "full_width"
    # Floats of one head's gathered keys and values per chunk of LCSA's routed step (issue 15; memory /
    # speed only, results do not depend on it beyond float rounding). Larger chunks mean fewer passes.
    cfg.MODEL.LCTD.CHUNK_ELEMENTS = 2 ** 18
    # Linear weights of the LCTD head (text adapter included): "trunc_normal" (std 0.02, bias 0; ZegCLIP's
    # decoder init, paper silent) or "torch" (PyTorch's defaults). The eq. (4) Conv1x1 stays zero-initialised.
    cfg.MODEL.LCTD.WEIGHT_INIT = "trunc_normal"
    cfg.MODEL.LCTD.TEXT_ADAPTER = True  # T_new = Proj([T * V_g; T]) (eq. 3); False uses T directly

    # ZegCLIP's decoder (MODEL.SEM_SEG_HEAD.NAME "ZegCLIPHead", the paper's baseline) [DESIGN 2]
    cfg.MODEL.ZEGCLIP = CN()
    cfg.MODEL.ZEGCLIP.NUM_LAYERS = 3  # decoder layers; masks come from the last one
    cfg.MODEL.ZEGCLIP.NUM_HEADS = 8  # cross-attention heads
    cfg.MODEL.ZEGCLIP.MLP_DIM = 2048  # feed-forward hidden width (4 x d)
    cfg.MODEL.ZEGCLIP.DROPOUT = 0.1  # residual / feed-forward dropout (torch TransformerDecoderLayer default)
    cfg.MODEL.ZEGCLIP.ATTN_DROPOUT = 0.1  # dropout on the cross-attention weights
    # ZegCLIP's layers subclass torch's TransformerDecoderLayer and keep its self-attention and first
    # norm, which forward never calls. True keeps these (gradient-free) weights so the trainable count
    # matches the official 13.8M/14.6M; False leaves them out (3.15M fewer at d 512).
    cfg.MODEL.ZEGCLIP.UNUSED_SELF_ATTENTION = True

    # CLIPtrase (MODEL.META_ARCHITECTURE "CLIPtrase", training-free; seed 001, SEED_SYSTEMS §2). Values are
    # the supplement's; where its official script differs (configs/cliptrase/ say which they follow) [S2.2].
    cfg.MODEL.CLIPTRASE = CN()
    cfg.MODEL.CLIPTRASE.TEMPLATES = ["imagenet80"]  # class-text templates and/or set names ("imagenet80", "vild14") [T4]
    cfg.MODEL.CLIPTRASE.CORRELATION_LAYER = -2  # block whose q/k/v give the self-correlation R (T1, "11th block")
    cfg.MODEL.CLIPTRASE.ATTENTION_LAYER = -1  # block whose attention is replaced by self-correlation attention (T2)
    cfg.MODEL.CLIPTRASE.ATTENTION_BRANCHES = ["q", "k", "v"]  # summed softmax(a a^T) branches; ["q","k"] = SCLIP; [] = plain CLIP
    cfg.MODEL.CLIPTRASE.CLUSTER = True  # DBSCAN regions + voting (T6-T9); False = per-pixel argmax (CLIP / SCLIP rows)
    cfg.MODEL.CLIPTRASE.DBSCAN_EPS = 0.7  # DBSCAN radius on rows of the denoised correlation (T7; script: 1.1 at 336)
    cfg.MODEL.CLIPTRASE.DBSCAN_MIN_SAMPLES = 3  # DBSCAN min_samples, the point itself included (T7; script: 7 at 336)
    cfg.MODEL.CLIPTRASE.DBSCAN_SCALE = "fixed"  # "fixed" or "grid": eps*sqrt(hw/196), round(min*hw/196) (ours)
    cfg.MODEL.CLIPTRASE.SMOOTH_RATIO = 4  # cluster maps upsampled x r before the median filter (T8)
    cfg.MODEL.CLIPTRASE.MEDIAN_SIZE = 7  # median filter size on the upsampled cluster maps, 2r-1 (T8)
    cfg.MODEL.CLIPTRASE.VOTE = "hard"  # "hard" (script: per-region majority) or "soft" (D2 code: region-mean logits) (T9)
    cfg.MODEL.CLIPTRASE.IMAGE_LEVEL_REWEIGHT = False  # logits x [CLS]-text similarity (T5', the script's VOC20 rule)
    cfg.MODEL.CLIPTRASE.BACKGROUND_CLASS = "background"  # vocabulary entry that stands for BACKGROUND_WORDS (T10)
    # words whose embeddings all vote for BACKGROUND_CLASS (T4/T10); [] = the test dataset's background_names
    # metadata, or the class name itself
    cfg.MODEL.CLIPTRASE.BACKGROUND_WORDS = []
    cfg.MODEL.CLIPTRASE.POS_INTERPOLATION = "bicubic"  # positional grid resize: "bicubic" (official code) or "bilinear"

    # Test vocabulary: False = each test dataset's stuff_classes; True = its prompt_class_names metadata where
    # registered (the exact names a paper's code prompted with, e.g. VOC 'tv'; CLIPtrase parity configs)
    cfg.DATASETS.PROMPT_CLASS_NAMES = False

    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD", over the trainable parameters only
    cfg.SOLVER.BASE_LR = 2e-4  # [1.3]
    cfg.SOLVER.WEIGHT_DECAY = 0.01  # [1.3]
    # Paper silent; ZegCLIP's optimizer decays every trainable parameter at 0.01 (its 'norm'/'ln' decay_mult 0
    # keys never apply: mmcv stops at the first matching key, 'backbone' or 'head').
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.01
    cfg.SOLVER.PROMPT_LR_MULTIPLIER = 1.0  # lr multiplier of the CLIP prompts relative to BASE_LR
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.POLY_LR_POWER = 0.9  # poly schedule power [1.3]
    cfg.SOLVER.POLY_LR_MIN = 1e-6  # absolute lr the poly schedule ends at (paper silent; ZegCLIP's mmseg min_lr)
    cfg.SOLVER.WARMUP_ITERS = 1500  # linear warm-up iterations [1.3]
    cfg.SOLVER.WARMUP_FACTOR = 1e-6  # lr factor at iteration 0
    cfg.SOLVER.WARMUP_METHOD = "linear"  # ramp to the poly value at the end of the warm-up
    # The warm-up takes at most this fraction of MAX_ITER (longer: clamped, with a warning), so a short run
    # cannot ramp towards the end-of-schedule lr and train at ~0 (ours; the paper's runs use 2-8%).
    cfg.SOLVER.WARMUP_MAX_FRACTION = 0.5
    # Images one process (GPU) holds in one forward pass; where IMS_PER_BATCH / processes is more, the step
    # accumulates gradients over equal parts (ldvc_d2.engine.schedule). 0 = no limit (no accumulation).
    cfg.SOLVER.MAX_IMS_PER_GPU = 0
    # > 0 opts in to detectron2's linear rescaling of batch/lr/iterations to other process counts; 0 (ours)
    # trains IMS_PER_BATCH, BASE_LR and MAX_ITER as written on any number of processes.
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0

    cfg.INPUT.SCALE_RATIO_RANGE = (0.5, 2.0)  # training resize ratio range of INPUT.TRAIN_SCALE [1.3]
    cfg.INPUT.TRAIN_SCALE = (2048, 512)  # (long, short) reference scale, as mmseg's img_scale
    cfg.INPUT.CROP.ENABLED = True  # random crop in training (crops are padded to CROP.SIZE by the model)
    cfg.INPUT.CROP.TYPE = "absolute"  # CROP.SIZE in pixels
    cfg.INPUT.CROP.SIZE = (512, 512)  # training crop (H, W) [1.3]
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75  # random crop retries while one class covers more
    # mmseg's PhotoMetricDistortion as ZegCLIP uses it (paper silent): brightness +-32, contrast 0.5-1.5,
    # saturation 0.5-1.5, hue -18..17 (OpenCV 0-180), each p=0.5, uint8 clip after every step.
    cfg.INPUT.PHOTOMETRIC_DISTORTION = True
    cfg.INPUT.MIN_SIZE_TEST = 512  # test images: short side resized to this [1.4]
    cfg.INPUT.MAX_SIZE_TEST = 2048  # cap on the long side after the test resize
    cfg.TEST.MIOU_RULE = "mmseg"  # "mmseg" (predicted GT-absent class: IoU 0), "present" (detectron2) or "cliptrase" (official metric.py)
    cfg.TEST.SKIP_NO_OBJECT_IMAGES = False  # skip images whose GT has no object label, only background/ignore (CLIPtrase's script)
    add_inference_config(cfg)  # MODEL.LDVC.INFERENCE.WINDOW_BATCH / PRECISION, SOLVER.AMP.DTYPE (ldvc_d2/config_inference.py)
    add_deop_config(cfg)  # MODEL.DEOP.*, MODEL.LDVC.PATCH_SEVERANCE_* (ldvc_d2/config_deop.py)
    add_deop_proposals_config(cfg)  # MODEL.DEOP_PROPOSALS.*, MODEL.DEOP_PROMPT_LEARNING.* (ldvc_d2/config_deop_proposals.py)
    add_c2s_config(cfg)  # MODEL.C2S.* (ldvc_d2/config_c2s.py)


def load_config_file(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)`` with YAML's safe loader for the file and every ``_BASE_`` it names.

    detectron2's ``merge_from_file`` falls back to ``yaml.unsafe_load``, where a ``!!python/...`` tag
    runs code; here such a tag is an error naming the file and line.
    """
    try:
        cfg.merge_from_file(path, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"'{mark.name}' line {mark.line + 1}" if mark is not None else f"'{path}' (or a _BASE_ it names)"
        raise ValueError(f"Config {where}: {e.problem}. ldvc_d2 reads configs with YAML's safe loader, so "
                         "Python tags (!!python/...), which would run code, are refused; write plain values.") from None


def validate_config(cfg: CN, *, training: bool) -> None:
    """Sizes and lengths that would otherwise fail deep inside a run, checked at its start."""
    inference = cfg.MODEL.LDVC.INFERENCE
    problems = []
    if int(inference.CROP_SIZE) <= 0:
        problems.append(f"MODEL.LDVC.INFERENCE.CROP_SIZE is {inference.CROP_SIZE}; it must be > 0")
    if inference.MODE == "slide" and not 0 < int(inference.STRIDE) <= max(int(inference.CROP_SIZE), 1):
        problems.append(f"MODEL.LDVC.INFERENCE.STRIDE is {inference.STRIDE}; it must be in 1..CROP_SIZE "
                        f"({inference.CROP_SIZE}) so the windows cover the image")
    if int(cfg.INPUT.MIN_SIZE_TEST) <= 0 or int(cfg.INPUT.MAX_SIZE_TEST) <= 0:
        problems.append(f"INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST are {cfg.INPUT.MIN_SIZE_TEST} / "
                        f"{cfg.INPUT.MAX_SIZE_TEST}; both must be > 0")
    if training:
        if int(cfg.SOLVER.MAX_ITER) <= 0:
            problems.append(f"SOLVER.MAX_ITER is {cfg.SOLVER.MAX_ITER}; training needs at least 1 iteration "
                            "(use --eval-only to evaluate)")
        if int(cfg.SOLVER.IMS_PER_BATCH) <= 0:
            problems.append(f"SOLVER.IMS_PER_BATCH is {cfg.SOLVER.IMS_PER_BATCH}; it must be > 0")
        if cfg.INPUT.CROP.ENABLED and min(cfg.INPUT.CROP.SIZE) <= 0:
            problems.append(f"INPUT.CROP.SIZE is {tuple(cfg.INPUT.CROP.SIZE)}; both sides must be > 0")
        problems += _training_set_problems(cfg)
    problems += inference_config_problems(cfg)
    problems += deop_config_problems(cfg, training)
    problems += deop_proposals_config_problems(cfg)
    problems += c2s_config_problems(cfg)
    if problems:
        raise ValueError("Invalid config: " + "; ".join(problems) + ".")


def _training_set_problems(cfg: CN) -> list:
    """Inductive training on a registered set whose classes are all unseen has nothing to learn."""
    from detectron2.data import MetadataCatalog

    if not cfg.DATASETS.TRAIN or cfg.MODEL.LDVC.TRAINING_CLASSES != "seen":
        return []
    name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(name)
    classes, seen = meta.get("stuff_classes", None), meta.get("seen_classes", None)
    if classes and seen is not None and not seen:
        return [f"DATASETS.TRAIN[0] '{name}' has no seen classes (all {len(classes)} are unseen), so inductive "
                "training (MODEL.LDVC.TRAINING_CLASSES 'seen') has nothing to learn; register it with fewer "
                "unseen_classes, or set MODEL.LDVC.TRAINING_CLASSES 'all'"]
    return []
