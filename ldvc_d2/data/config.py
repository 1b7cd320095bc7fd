"""Data keys beside detectron2's INPUT.* and DATASETS.*: mmseg-style training resize, crop and photometric
distortion (ZegCLIP's pipeline, which LDVC follows [DESIGN 1.3]), the test resize, and the test vocabulary.
Read by ldvc_d2.data.mapper and the segmentors."""
from detectron2.config import CfgNode as CN

__all__ = ["add_data_config", "data_config_problems"]


def add_data_config(cfg: CN) -> None:
    """Add the INPUT / DATASETS keys (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    i = cfg.INPUT
    i.FORMAT = "RGB"  # CLIP's channel order
    i.SCALE_RATIO_RANGE = (0.5, 2.0)  # training resize ratio range of INPUT.TRAIN_SCALE [1.3]
    i.TRAIN_SCALE = (2048, 512)  # (long, short) reference scale, as mmseg's img_scale
    i.CROP.ENABLED = True  # random crop in training (crops are padded to CROP.SIZE by the model)
    i.CROP.TYPE = "absolute"  # CROP.SIZE in pixels
    i.CROP.SIZE = (512, 512)  # training crop (H, W) [1.3]
    i.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75  # random crop retries while one class covers more
    # mmseg's PhotoMetricDistortion as ZegCLIP uses it (paper silent): brightness +-32, contrast 0.5-1.5,
    # saturation 0.5-1.5, hue -18..17 (OpenCV 0-180), each p=0.5, uint8 clip after every step.
    i.PHOTOMETRIC_DISTORTION = True
    i.MIN_SIZE_TEST = 512  # test images: short side resized to this [1.4]
    i.MAX_SIZE_TEST = 2048  # cap on the long side after the test resize
    # Test vocabulary: False = each test dataset's stuff_classes; True = its prompt_class_names metadata where
    # registered (the exact names a paper's code prompted with, e.g. VOC 'tv'; CLIPtrase parity configs)
    cfg.DATASETS.PROMPT_CLASS_NAMES = False


def data_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with the data keys (for ``validate_config``), each message naming its key."""
    problems = []
    if int(cfg.INPUT.MIN_SIZE_TEST) <= 0 or int(cfg.INPUT.MAX_SIZE_TEST) <= 0:
        problems.append(f"INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST are {cfg.INPUT.MIN_SIZE_TEST} / "
                        f"{cfg.INPUT.MAX_SIZE_TEST}; both must be > 0")
    if training and cfg.INPUT.CROP.ENABLED and min(cfg.INPUT.CROP.SIZE) <= 0:
        problems.append(f"INPUT.CROP.SIZE is {tuple(cfg.INPUT.CROP.SIZE)}; both sides must be > 0")
    return problems
