"""Zero-shot semantic segmentation metrics from one confusion matrix (pure NumPy, no detectron2).

Kept apart from the evaluator so that the numbers can be tested by hand and recomputed offline from
the confusion matrix that ``ZeroShotSemSegEvaluator`` writes beside ``sem_seg_metrics.json``
(``sem_seg_confusion.npz``, :func:`ldvc_d2.evaluation.load_confusion_matrix`).

NaN semantics follow MMSegmentation (where the published zero-shot numbers come from), not
detectron2's ``SemSegEvaluator``:

* a class absent from both ground truth and prediction has IoU NaN and is left out of every mean;
* a class that is predicted but absent from the ground truth has IoU 0 and *counts* in the means
  (detectron2 leaves out every class absent from the ground truth, so its mIoU is higher on small or
  partial evaluation sets; on the full VOC / COCO-Stuff validation sets the two agree).

``miou_rule="present"`` selects detectron2's rule instead: the IoU of every class absent from the
ground truth is NaN, whether predicted or not. On PASCAL Context-459 and ADE20K-full many classes
never occur in the validation ground truth, so the two rules differ a lot.

``miou_rule="cliptrase"`` is CLIPtrase's official ``configs/metric.py:11-23``, which produced its
published numbers: IoU = TP / (GT + pred - TP + 0.01) over the classes present in the ground truth
(``mean_iu = nanmean(iu[hist.sum(axis=1) > 0])``), accuracy = TP / (GT + 0.01) for *every* class, so
mAcc averages over all classes with 0 for those absent from the ground truth; pAcc is the same and
fwIoU weights these IoUs by ground-truth frequency (classes with pixels only). The +0.01 moves a
class's IoU by less than 0.01/union, i.e. nothing on full datasets, but it is the official formula.
"""
from collections import OrderedDict
from typing import Sequence

import numpy as np

__all__ = ["MIOU_RULES", "confusion_matrix", "zero_shot_metrics", "harmonic_iou"]

# How classes absent from the ground truth enter the IoU means (module docstring).
MIOU_RULES = ("mmseg", "present", "cliptrase")
_CLIPTRASE_EPS = 0.01  # added to every IoU and accuracy denominator by the official metric.py


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """Count (ground truth, prediction) pixel pairs of one image.

    Args:
        gt: integer label map, any shape; values in ``[0, num_classes)`` or ``ignore_label``.
        pred: integer prediction map of the same shape, values in ``[0, num_classes)``.

    Returns:
        int64 array of shape ``(num_classes + 1, num_classes + 1)``: rows are ground truth, columns
        prediction. Ignored pixels land in the last row (so the matrix also records how many pixels
        were ignored); the last column is always zero. Metrics use the top-left ``C x C`` block.
    """
    n = num_classes + 1
    gt = np.where(gt == ignore_label, num_classes, gt).astype(np.int64).reshape(-1)
    pred = pred.astype(np.int64).reshape(-1)
    return np.bincount(n * gt + pred, minlength=n * n).reshape(n, n)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without NumPy's empty-slice warning) if there are none."""
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def harmonic_iou(seen_miou: float, unseen_miou: float) -> float:
    """hIoU = 2·S·U / (S + U); 0 when S + U == 0, NaN when either mean is NaN."""
    if np.isnan(seen_miou) or np.isnan(unseen_miou):
        return float("nan")
    if seen_miou + unseen_miou == 0:
        return 0.0
    return 2.0 * seen_miou * unseen_miou / (seen_miou + unseen_miou)


def zero_shot_metrics(
    conf_matrix: np.ndarray,
    seen: Sequence[int],
    unseen: Sequence[int],
    class_names: Sequence[str],
    miou_rule: str = "mmseg",
) -> "OrderedDict[str, float]":
    """Compute pAcc, mAcc, fwIoU, mIoU, mIoU(S), mIoU(U), hIoU and per-class IoU / accuracy.

    Args:
        conf_matrix: ``(C, C)`` or ``(C + 1, C + 1)`` counts, rows = ground truth, columns =
            prediction, ``C = len(class_names)``; in the second form the last row and column
            (ignored pixels, see :func:`confusion_matrix`) are dropped.
        seen, unseen: class indices into ``class_names``; either may be empty.
        class_names: names used for the ``IoU-<name>`` / ``ACC-<name>`` keys.
        miou_rule: ``"mmseg"`` (a class absent from the ground truth but predicted has IoU 0),
            ``"present"`` (its IoU is NaN: every mean is over the classes present in the ground
            truth, as detectron2 computes it) or ``"cliptrase"`` (the official CLIPtrase metric:
            "present" with +0.01 in the denominators, mAcc over all classes); see the module docstring.

    Returns:
        Ordered dict of percentages. ``mIoU(U)`` and ``hIoU`` are NaN when there are no unseen
        classes (fully supervised); keys are always present so result tables keep their columns.
        pAcc is over all non-ignored pixels; mAcc and fwIoU use the classes present in the ground
        truth (accuracy is undefined for the others), except under ``"cliptrase"``, where the
        accuracy of a class absent from the ground truth is 0 and counts in mAcc.
    """
    if miou_rule not in MIOU_RULES:
        raise ValueError(f"miou_rule {miou_rule!r} is not one of {MIOU_RULES}")
    num_classes = len(class_names)
    conf = np.asarray(conf_matrix, dtype=np.float64)
    if conf.shape == (num_classes + 1, num_classes + 1):
        conf = conf[:num_classes, :num_classes]
    elif conf.shape != (num_classes, num_classes):
        raise ValueError(
            f"confusion matrix has shape {conf.shape}, expected ({num_classes}, {num_classes}) or "
            f"({num_classes + 1}, {num_classes + 1}) for {num_classes} class names"
        )
    tp = np.diag(conf)
    gt_pixels = conf.sum(axis=1)
    pred_pixels = conf.sum(axis=0)
    union = gt_pixels + pred_pixels - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        if miou_rule == "cliptrase":
            iou = np.where(gt_pixels > 0, tp / (union + _CLIPTRASE_EPS), np.nan)
            acc = tp / (gt_pixels + _CLIPTRASE_EPS)
        else:
            iou = np.where(union > 0, tp / union, np.nan)
            if miou_rule == "present":
                iou = np.where(gt_pixels > 0, iou, np.nan)
            acc = np.where(gt_pixels > 0, tp / gt_pixels, np.nan)
    total = gt_pixels.sum()
    freq = gt_pixels / total if total > 0 else np.zeros_like(gt_pixels)

    seen_miou = _nanmean(iou[list(seen)]) * 100
    unseen_miou = _nanmean(iou[list(unseen)]) * 100
    res: "OrderedDict[str, float]" = OrderedDict()
    res["pAcc"] = float(tp.sum() / total * 100) if total > 0 else float("nan")
    res["mAcc"] = _nanmean(acc) * 100
    res["fwIoU"] = float(np.nansum(freq * iou) * 100) if total > 0 else float("nan")
    res["mIoU"] = _nanmean(iou) * 100
    res["mIoU(S)"] = seen_miou
    res["mIoU(U)"] = unseen_miou
    res["hIoU"] = harmonic_iou(seen_miou, unseen_miou)
    for name, value in zip(class_names, iou):
        res[f"IoU-{name}"] = float(value * 100)
    for name, value in zip(class_names, acc):
        res[f"ACC-{name}"] = float(value * 100)
    return res
