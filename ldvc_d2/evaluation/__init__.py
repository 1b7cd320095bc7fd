"""Evaluation: zero-shot semantic segmentation metrics (seen / unseen / harmonic mIoU)."""
from .confusion_file import load_confusion_matrix
from .metrics import confusion_matrix, harmonic_iou, zero_shot_metrics
from .zero_shot_evaluator import ZeroShotSemSegEvaluator

__all__ = ["ZeroShotSemSegEvaluator", "confusion_matrix", "harmonic_iou", "load_confusion_matrix",
           "zero_shot_metrics"]
