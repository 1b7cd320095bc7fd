"""Config keys of ldvc_d2. Every key added here has a one-line comment; DESIGN/paper references in []."""
from detectron2.config import CfgNode as CN

__all__ = ["add_ldvc_config"]


def add_ldvc_config(cfg: CN) -> None:
    """Add the LDVC keys to a detectron2 config (call before merge_from_file)."""
    cfg.MODEL.META_ARCHITECTURE = "LDVC"
    cfg.MODEL.BACKBONE.NAME = "PromptedCLIPBackbone"
    # ZegCLIP normalises with ImageNet statistics (RGB, 0-255), not CLIP's; CLIP's are
    # [122.771, 116.746, 104.094] / [68.501, 66.632, 70.323] [DESIGN 1.3].
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"

    cfg.MODEL.LDVC = CN()
    cfg.MODEL.LDVC.CLIP_MODEL = "ViT-B-16"  # open_clip model name (any open_clip ViT, e.g. ViT-L-14)
    cfg.MODEL.LDVC.CLIP_PRETRAINED = "openai"  # open_clip pretrained tag, local checkpoint path, or "" (random init)
    cfg.MODEL.LDVC.CLIP_CACHE_DIR = ""  # where open_clip caches downloaded weights ("" = its default)
    cfg.MODEL.LDVC.VISUAL_PROMPTS = 40  # deep visual prompt tokens per layer: 40 VOC, 100 COCO-Stuff [1.1]
    cfg.MODEL.LDVC.TEXT_PROMPTS = 6  # deep text prompt tokens per layer [1.1]
    cfg.MODEL.LDVC.TEXT_PROMPT_INIT = "template"  # "template" (hand-crafted, Table 6) or "random"
    cfg.MODEL.LDVC.TEXT_PROMPT_TEMPLATE = "this is a photo of a {}."  # its words before {} init the prompts
    # 0-based image-encoder blocks giving V_j, one per LCTD block (eq. 4); [] = auto: evenly spaced from
    # the middle block to the last (ViT-B/16, 2 blocks: [6, 11]). The paper does not say which.
    cfg.MODEL.LDVC.INTERMEDIATE_LAYERS = []
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
    cfg.MODEL.LCTD.DROPOUT = 0.0  # dropout in attention outputs and MLP (paper silent)
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

    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD", over the trainable parameters only
    cfg.SOLVER.BASE_LR = 2e-4  # [1.3]
    cfg.SOLVER.WEIGHT_DECAY = 0.01  # [1.3]
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0  # no weight decay on normalisation layers (ZegCLIP)
    cfg.SOLVER.PROMPT_LR_MULTIPLIER = 1.0  # lr multiplier of the CLIP prompts relative to BASE_LR
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.POLY_LR_POWER = 0.9  # poly schedule power [1.3]
    cfg.SOLVER.POLY_LR_END = 0.0  # final lr as a fraction of BASE_LR (ZegCLIP's absolute min lr 1e-6 is ~0)
    cfg.SOLVER.WARMUP_ITERS = 1500  # linear warm-up iterations [1.3]
    cfg.SOLVER.WARMUP_FACTOR = 1e-6  # lr factor at iteration 0
    cfg.SOLVER.WARMUP_METHOD = "linear"  # ramp to the poly value at the end of the warm-up

    cfg.INPUT.SCALE_RATIO_RANGE = (0.5, 2.0)  # training resize ratio range of INPUT.TRAIN_SCALE [1.3]
    cfg.INPUT.TRAIN_SCALE = (2048, 512)  # (long, short) reference scale, as mmseg's img_scale
    cfg.INPUT.CROP.ENABLED = True  # random crop in training (crops are padded to CROP.SIZE by the model)
    cfg.INPUT.CROP.TYPE = "absolute"  # CROP.SIZE in pixels
    cfg.INPUT.CROP.SIZE = (512, 512)  # training crop (H, W) [1.3]
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75  # random crop retries while one class covers more
    cfg.INPUT.PHOTOMETRIC_DISTORTION = True  # brightness/contrast/saturation/hue jitter (mmseg style)
    cfg.INPUT.MIN_SIZE_TEST = 512  # test images: short side resized to this [1.4]
    cfg.INPUT.MAX_SIZE_TEST = 2048  # cap on the long side after the test resize
