"""MODEL.SEGMENTOR: what every zero-shot segmentor shares, and the
:class:`~ldvc_d2.modeling.segmentor.ZeroShotSegmentor` arguments a config and the dataset metadata give:
the class lists (LDVC §4.1, DESIGN §1.5: the training dataset's *seen* classes, inductive, or all of them,
MODEL.SEGMENTOR.TRAINING_CLASSES "all"), the test classes, ZegCLIP's seen-score calibration (inductive models
only) and the inference settings. Every method's ``from_config`` starts from :func:`segmentor_config`.
"""
from typing import Dict, List, Tuple

from detectron2.config import CfgNode as CN
from detectron2.data import MetadataCatalog

from ..utils.precision import PRECISION_DTYPES

__all__ = ["add_segmentor_config", "class_lists_from_metadata", "registered_train_sets", "seen_score_calibration",
           "segmentor_config", "segmentor_config_problems"]


def add_segmentor_config(cfg: CN) -> None:
    """Add MODEL.SEGMENTOR.* and the MODEL defaults every segmentor starts from (called by ``add_ldvc_config``)."""
    cfg.MODEL.META_ARCHITECTURE = "LDVC"  # LDVC, ZegCLIP, CLIPtrase, DeOP (+ DeOPPromptLearner, DeOPProposals), C2S, MaskCLIP, SCLIP, ClearCLIP, NACLIP, ProxyCLIP
    cfg.MODEL.BACKBONE.NAME = "PromptedCLIPBackbone"  # the prompted CLIP towers of LDVC and ZegCLIP
    # ZegCLIP normalises with ImageNet statistics (RGB, 0-255), not CLIP's; CLIP's are
    # [122.771, 116.746, 104.094] / [68.501, 66.632, 70.323] [DESIGN 1.3].
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # ImageNet std (ZegCLIP's)
    s = cfg.MODEL.SEGMENTOR = CN()
    s.TRAINING_CLASSES = "seen"  # "seen" (inductive), "all" (transductive / fully supervised)
    s.CLASS_EMBEDDINGS = "text"  # "text" (CLIP) or "random" (no-language control: names -> random vectors)
    s.SEEN_SCORE_CALIBRATION = 0.1  # subtracted from seen-class sigmoid scores at test, inductive only [1.4]
    # Transductive self-training [1.5]: with TRAINING_CLASSES "all", pixels whose label is an unseen class
    # of DATASETS.TRAIN[0] get the arg-max unseen class of the (detached) prediction as label, online.
    s.SELF_TRAINING = False
    s.LOSS = CN()  # the per-pixel loss of the CLIP-decoder segmentors (LDVC, ZegCLIP) and C2S's L_p
    s.LOSS.FOCAL_WEIGHT = 100.0  # sigmoid focal loss weight [1.3]
    s.LOSS.DICE_WEIGHT = 1.0  # dice loss weight [1.3]
    s.LOSS.FOCAL_ALPHA = 0.25  # focal loss alpha (positives' weight)
    s.LOSS.FOCAL_GAMMA = 2.0  # focal loss focusing exponent
    s.LOSS.IGNORE_AS_NEGATIVE = True  # 255 pixels count as negatives in focal/dice (ZegCLIP)
    s.INFERENCE = CN()
    s.INFERENCE.MODE = "slide"  # "slide" (sliding window) or "whole" [1.4]
    s.INFERENCE.CROP_SIZE = 512  # sliding-window size (pixels)
    s.INFERENCE.STRIDE = 426  # sliding-window stride (pixels)
    # Windows (sliding windows of one image, and of consecutive images of a batch with the same window size
    # and vocabulary) scored in one forward pass, at most this many; 0 or 1 = one window per pass. Scores
    # equal one-by-one's to float rounding (tests/test_batched_windows.py). 8 (ours): all 5 windows of a
    # 512x2048 image at crop 512 / stride 426, or of four 512x683 images (2 each), in one pass; the cost is
    # 8 windows' C x 512 x 512 fp32 scores at once (1.4 GB at 171 classes); lower it on small GPUs.
    s.INFERENCE.WINDOW_BATCH = 8
    # Arithmetic of the window forward passes: "fp32", "bf16" or "fp16" (torch.autocast on MODEL.DEVICE;
    # scores are returned, averaged and calibrated in fp32; text embeddings are encoded in fp32).
    s.INFERENCE.PRECISION = "fp32"
    # PAMR refinement of the test scores at the output size (Araslanov & Roth 2020; modeling/pamr.py), iterations:
    # 0 = off; 10 in NACLIP's README row and SCLIP's option
    s.INFERENCE.PAMR_STEPS = 0
    s.INFERENCE.PAMR_DILATIONS = [8, 16]  # PAMR neighbour dilations in pixels (SCLIP / NACLIP released code: 8, 16)


def segmentor_config_problems(cfg: CN, training: bool) -> List[str]:
    """What is wrong with MODEL.SEGMENTOR (for ``validate_config``), each message naming its key."""
    s, problems = cfg.MODEL.SEGMENTOR, []
    inference = s.INFERENCE
    if inference.MODE not in ("slide", "whole"):
        problems.append(f"MODEL.SEGMENTOR.INFERENCE.MODE is '{inference.MODE}'; use 'slide' or 'whole'")
    if int(inference.CROP_SIZE) <= 0:
        problems.append(f"MODEL.SEGMENTOR.INFERENCE.CROP_SIZE is {inference.CROP_SIZE}; it must be > 0")
    if inference.MODE == "slide" and not 0 < int(inference.STRIDE) <= max(int(inference.CROP_SIZE), 1):
        problems.append(f"MODEL.SEGMENTOR.INFERENCE.STRIDE is {inference.STRIDE}; it must be in 1..CROP_SIZE "
                        f"({inference.CROP_SIZE}) so the windows cover the image")
    if int(inference.WINDOW_BATCH) < 0:
        problems.append(f"MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH is {inference.WINDOW_BATCH}; it must be >= 0 "
                        "(0 or 1: one window per forward pass)")
    if inference.PRECISION not in PRECISION_DTYPES:
        problems.append(f"MODEL.SEGMENTOR.INFERENCE.PRECISION is '{inference.PRECISION}'; use one of {list(PRECISION_DTYPES)}")
    if int(inference.PAMR_STEPS) < 0 or any(int(d) < 1 for d in inference.PAMR_DILATIONS) or (
            int(inference.PAMR_STEPS) > 0 and not inference.PAMR_DILATIONS):
        problems.append(f"MODEL.SEGMENTOR.INFERENCE.PAMR_STEPS ({inference.PAMR_STEPS}) must be >= 0 and "
                        f"PAMR_DILATIONS ({list(inference.PAMR_DILATIONS)}) non-empty positive integers")
    if s.TRAINING_CLASSES not in ("seen", "all"):
        problems.append(f"MODEL.SEGMENTOR.TRAINING_CLASSES is '{s.TRAINING_CLASSES}'; use 'seen' or 'all'")
    if s.CLASS_EMBEDDINGS not in ("text", "random"):
        problems.append(f"MODEL.SEGMENTOR.CLASS_EMBEDDINGS is '{s.CLASS_EMBEDDINGS}'; use 'text' or 'random'")
    if training:
        problems += _training_set_problems(cfg)
    return problems


def _training_set_problems(cfg: CN) -> List[str]:
    """Inductive training on a registered set whose classes are all unseen has nothing to learn."""
    if not cfg.DATASETS.TRAIN or cfg.MODEL.SEGMENTOR.TRAINING_CLASSES != "seen":
        return []
    name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(name)
    classes, seen = meta.get("stuff_classes", None), meta.get("seen_classes", None)
    if classes and seen is not None and not seen:
        return [f"DATASETS.TRAIN[0] '{name}' has no seen classes (all {len(classes)} are unseen), so inductive "
                "training (MODEL.SEGMENTOR.TRAINING_CLASSES 'seen') has nothing to learn; register it with fewer "
                "unseen_classes, or set MODEL.SEGMENTOR.TRAINING_CLASSES 'all'"]
    return []


def class_lists_from_metadata(dataset_name: str, training_classes: str = "seen") -> Tuple[List[str], List[int]]:
    """(class names the model is trained with, their indices into the dataset's ``stuff_classes``)."""
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("stuff_classes", None)
    if names is None:
        raise ValueError(
            f"Dataset '{dataset_name}' has no 'stuff_classes' metadata; register it with "
            "stuff_classes/seen_classes/unseen_classes (see datasets/README.md)."
        )
    if training_classes == "all":
        return list(names), list(range(len(names)))
    if training_classes != "seen":
        raise ValueError(f"MODEL.SEGMENTOR.TRAINING_CLASSES must be 'seen' or 'all', got '{training_classes}'.")
    seen = meta.get("seen_classes", None)
    if seen is None:
        raise ValueError(
            f"Dataset '{dataset_name}' has no 'seen_classes' metadata, needed for inductive training "
            "(MODEL.SEGMENTOR.TRAINING_CLASSES='seen'); add it, or train on all classes with 'all'."
        )
    return [names[i] for i in seen], list(seen)


def registered_train_sets(cfg) -> List[str]:
    """The DATASETS.TRAIN entries registered with ``stuff_classes`` metadata."""
    return [d for d in cfg.DATASETS.TRAIN if MetadataCatalog.get(d).get("stuff_classes", None) is not None]


def seen_score_calibration(cfg) -> float:
    """ZegCLIP's calibration applies to inductive models only (trained on the seen classes)."""
    return cfg.MODEL.SEGMENTOR.SEEN_SCORE_CALIBRATION if cfg.MODEL.SEGMENTOR.TRAINING_CLASSES == "seen" else 0.0


def segmentor_config(cfg, *, trains: bool = True) -> Dict[str, object]:
    """The :class:`ZeroShotSegmentor` arguments of a config (a method's ``from_config`` adds its own).

    ``trains=False`` (training-free methods) leaves the training class list empty and the
    calibration at 0: such a model has no seen classes.
    """
    c = cfg.MODEL.SEGMENTOR
    train_names, train_ids = None, None
    if trains:
        registered = registered_train_sets(cfg)
        lists = [class_lists_from_metadata(d, c.TRAINING_CLASSES) for d in registered]
        if any(other != lists[0] for other in lists[1:]):
            raise ValueError(f"DATASETS.TRAIN {registered} have different class lists; train on datasets that share one.")
        train_names, train_ids = lists[0] if lists else (None, None)
    test_names, test_seen = None, []
    if cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        test_names = meta.get("stuff_classes", None)
        test_seen = meta.get("seen_classes", [])
    return {
        "train_class_names": train_names,
        "train_class_ids": train_ids,
        "test_class_names": test_names,
        "test_seen_classes": test_seen,
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
        "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        "calibration": seen_score_calibration(cfg) if trains else 0.0,
        "train_size": tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else (0, 0),
        "inference_mode": c.INFERENCE.MODE,
        "crop_size": c.INFERENCE.CROP_SIZE,
        "stride": c.INFERENCE.STRIDE,
        "window_batch": c.INFERENCE.WINDOW_BATCH,
        "precision": c.INFERENCE.PRECISION,
        **_pamr_args(c.INFERENCE),
    }


def _pamr_args(inference) -> Dict[str, object]:
    """PAMR arguments, only when it is on (segmentors that never refine need not take them); both keys are read."""
    steps, dilations = int(inference.PAMR_STEPS), list(inference.PAMR_DILATIONS)
    return {"pamr_steps": steps, "pamr_dilations": dilations} if steps else {}
