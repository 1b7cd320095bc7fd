"""Evaluation: zero-shot semantic segmentation metrics (seen / unseen / harmonic mIoU)."""
from .metrics import confusion_matrix, harmonic_iou, zero_shot_metrics
from .zero_shot_evaluator import ZeroShotSemSegEvaluator

__all__ = ["ZeroShotSemSegEvaluator", "confusion_matrix", "harmonic_iou", "zero_shot_metrics"]
