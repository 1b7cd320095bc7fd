"""Evaluation keys beside detectron2's TEST.*: the mIoU rule and the image filter of
:class:`~ldvc_d2.evaluation.ZeroShotSemSegEvaluator`."""
from detectron2.config import CfgNode as CN

from .metrics import MIOU_RULES

__all__ = ["add_evaluation_config", "evaluation_config_problems"]


def add_evaluation_config(cfg: CN) -> None:
    """Add the TEST keys (called by :func:`ldvc_d2.config.add_ldvc_config`)."""
    # "mmseg" (predicted GT-absent class: IoU 0), "present" (detectron2) or "cliptrase" (official metric.py)
    cfg.TEST.MIOU_RULE = "mmseg"
    cfg.TEST.SKIP_NO_OBJECT_IMAGES = False  # skip images whose GT has no object label, only background/ignore (CLIPtrase's script)


def evaluation_config_problems(cfg: CN, training: bool) -> list:
    """What is wrong with the evaluation keys (for ``validate_config``), each message naming its key."""
    if cfg.TEST.MIOU_RULE not in MIOU_RULES:
        return [f"TEST.MIOU_RULE is '{cfg.TEST.MIOU_RULE}'; use one of {list(MIOU_RULES)}"]
    return []
