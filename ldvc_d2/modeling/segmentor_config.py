"""The :class:`~ldvc_d2.modeling.segmentor.ZeroShotSegmentor` arguments a config and the dataset metadata give:
the class lists (LDVC §4.1, DESIGN §1.5: the training dataset's *seen* classes, inductive, or all of them,
MODEL.LDVC.TRAINING_CLASSES "all"), the test classes, ZegCLIP's seen-score calibration (inductive models
only) and the inference settings. Every method's ``from_config`` starts from :func:`segmentor_config`.
"""
from typing import Dict, List, Tuple

from detectron2.data import MetadataCatalog

__all__ = ["class_lists_from_metadata", "registered_train_sets", "seen_score_calibration", "segmentor_config"]


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
        raise ValueError(f"MODEL.LDVC.TRAINING_CLASSES must be 'seen' or 'all', got '{training_classes}'.")
    seen = meta.get("seen_classes", None)
    if seen is None:
        raise ValueError(
            f"Dataset '{dataset_name}' has no 'seen_classes' metadata, needed for inductive training "
            "(MODEL.LDVC.TRAINING_CLASSES='seen'); add it, or train on all classes with 'all'."
        )
    return [names[i] for i in seen], list(seen)


def registered_train_sets(cfg) -> List[str]:
    """The DATASETS.TRAIN entries registered with ``stuff_classes`` metadata."""
    return [d for d in cfg.DATASETS.TRAIN if MetadataCatalog.get(d).get("stuff_classes", None) is not None]


def seen_score_calibration(cfg) -> float:
    """ZegCLIP's calibration applies to inductive models only (trained on the seen classes)."""
    return cfg.MODEL.LDVC.SEEN_SCORE_CALIBRATION if cfg.MODEL.LDVC.TRAINING_CLASSES == "seen" else 0.0


def segmentor_config(cfg, *, trains: bool = True) -> Dict[str, object]:
    """The :class:`ZeroShotSegmentor` arguments of a config (a method's ``from_config`` adds its own).

    ``trains=False`` (training-free methods) leaves the training class list empty and the
    calibration at 0: such a model has no seen classes.
    """
    c = cfg.MODEL.LDVC
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
    }
