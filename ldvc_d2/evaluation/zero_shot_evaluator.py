"""Detectron2 evaluator for zero-shot semantic segmentation: seen, unseen and harmonic mIoU.

Seen and unseen classes are always evaluated *jointly*: the prediction is an arg-max over all test
classes and every metric comes from one confusion matrix over all of them (never novel-only).
"""
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..utils.io import write_json_atomic
from .confusion_file import CONFUSION_FILE, CONFUSION_LAYOUT, save_confusion_matrix
from .ground_truth import apply_label_map, has_object_label, label_map_lut, read_index_png
from .metrics import MIOU_RULES, confusion_matrix, zero_shot_metrics

__all__ = ["ZeroShotSemSegEvaluator"]

_SUMMARY_KEYS = ("pAcc", "mIoU", "mIoU(S)", "mIoU(U)", "hIoU")
_RULE_TEXT = {
    "mmseg": "a predicted class absent from the ground truth counts as IoU 0",
    "present": "means over the classes present in the ground truth",
    "cliptrase": "CLIPtrase's metric.py: IoU over the classes present in the ground truth, +0.01 in "
                 "denominators, mAcc over all classes",
}


class ZeroShotSemSegEvaluator(DatasetEvaluator):
    """Semantic segmentation evaluator that reports seen / unseen / harmonic mIoU.

    Subclasses :class:`DatasetEvaluator` rather than detectron2's ``SemSegEvaluator``, whose
    constructor and internals differ between detectron2 0.6 and current main.

    Reads from ``MetadataCatalog.get(dataset_name)``: ``stuff_classes`` (names of all C test
    classes), ``seen_classes`` and ``unseen_classes`` (int indices into ``stuff_classes``; set
    ``unseen_classes=[]`` for fully supervised evaluation) and ``ignore_label`` (default 255).
    Ground truth is the index PNG ``sem_seg_file_name`` of the dataset dict whose ``file_name``
    matches the input (values = class index, ``ignore_label`` = not evaluated).

    Metrics (percent, see :func:`ldvc_d2.evaluation.metrics.zero_shot_metrics`): pAcc, mAcc, fwIoU,
    mIoU, mIoU(S), mIoU(U), hIoU = 2·S·U/(S+U), ``IoU-<class>``, ``ACC-<class>``.
    NaN semantics follow MMSegmentation, where the published numbers come from: a class absent from
    both ground truth and prediction is NaN and left out of the means, but a class that is predicted
    and absent from the ground truth has IoU 0 and counts. detectron2's ``SemSegEvaluator`` instead
    leaves out every class absent from the ground truth, so it reports a higher mIoU on small or
    partial evaluation sets. With no unseen classes, ``mIoU(U)`` and ``hIoU`` are NaN.
    ``miou_rule="present"`` selects that detectron2 rule, ``"cliptrase"`` CLIPtrase's official
    metric; the log line and ``sem_seg_metrics.json`` name the rule used (the metrics dict keeps its
    float-only keys, which detectron2's hooks and ``print_csv_format`` require).

    Optional metadata for sets scored as another code scores them (:mod:`.ground_truth`):
    ``gt_label_map`` (dict stored label -> scored label, applied before counting; other labels stay)
    and ``no_object_labels`` (stored labels that are not an object, default ``background_class``
    (if any) and ``ignore_label``): with ``skip_no_object_images`` an image whose stored ground
    truth has no other label is left out and counted as skipped (log line and JSON).

    Labels may be 8- or 16-bit PNGs and ``ignore_label`` any value outside ``0..C-1`` (e.g. 65535
    for PASCAL Context-459 and ADE20K-full, which have more than 255 classes).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        protocol: str = "",
        miou_rule: str = "mmseg",
        weights: Optional[Dict[str, Any]] = None,
        skip_no_object_images: bool = False,
    ) -> None:
        """
        Args:
            dataset_name: a name registered in ``DatasetCatalog`` and ``MetadataCatalog``.
            distributed: gather confusion matrices from all processes; only the main process
                returns results.
            output_dir: where to write ``sem_seg_metrics.json``; ``None`` writes nothing.
            protocol: how the predictions were made (e.g. "sliding window 512x512 stride 426,
                short side 512"), logged and saved next to the numbers so they can be compared.
            miou_rule: ``"mmseg"`` (default), ``"present"`` or ``"cliptrase"``, how classes absent
                from the ground truth enter the means (:mod:`ldvc_d2.evaluation.metrics`); config
                key ``TEST.MIOU_RULE``.
            weights: what the evaluated model's weights are (file, sha256, load status, as
                :class:`ldvc_d2.checkpoint.Checkpointer` records them), saved in the report; ``None``
                (null): the weights in memory, e.g. at the end of a training run.
            skip_no_object_images: leave out images whose stored ground truth holds only
                ``no_object_labels`` (CLIPtrase's official script skips them,
                ``clip_self_correlation.py:131-140``); config key ``TEST.SKIP_NO_OBJECT_IMAGES``.
        """
        if miou_rule not in MIOU_RULES:
            raise ValueError(f"miou_rule {miou_rule!r} is not one of {MIOU_RULES} (config key TEST.MIOU_RULE)")
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._protocol = protocol
        self._miou_rule = miou_rule
        self._weights = weights
        self._skip_no_object = skip_no_object_images

        meta = MetadataCatalog.get(dataset_name)
        self._class_names: List[str] = list(self._require(meta, "stuff_classes", "list of class names"))
        self._num_classes = len(self._class_names)
        self._seen = self._class_indices(meta, "seen_classes")
        self._unseen = self._class_indices(meta, "unseen_classes")
        overlap = sorted(set(self._seen) & set(self._unseen))
        if overlap:
            raise ValueError(
                f"Dataset '{dataset_name}': classes {overlap} are in both seen_classes and "
                "unseen_classes; each class must be in at most one of them."
            )
        self._ignore_label = int(getattr(meta, "ignore_label", 255))
        if 0 <= self._ignore_label < self._num_classes:
            raise ValueError(
                f"Dataset '{dataset_name}': ignore_label {self._ignore_label} is a class index "
                f"(there are {self._num_classes} classes); use a label outside 0..{self._num_classes - 1}."
            )
        label_map = getattr(meta, "gt_label_map", None)
        self._lut = None if label_map is None else label_map_lut(label_map, dataset_name)
        self._label_map = None if label_map is None else {str(k): int(v) for k, v in sorted(dict(label_map).items())}
        background = getattr(meta, "background_class", None)
        default_no_object = [self._ignore_label] + ([] if background is None else [int(background)])
        self._no_object_labels = sorted(int(v) for v in getattr(meta, "no_object_labels", default_no_object))
        self._input_file_to_gt_file = {
            record["file_name"]: record["sem_seg_file_name"] for record in DatasetCatalog.get(dataset_name)
        }
        self.reset()

    def _require(self, meta: Any, key: str, what: str) -> Any:
        value = getattr(meta, key, None)
        if value is None:
            raise ValueError(
                f"Dataset '{self._dataset_name}' has no metadata key '{key}', which "
                f"ZeroShotSemSegEvaluator needs: set MetadataCatalog.get('{self._dataset_name}')"
                f".set({key}=...) ({what}) where the dataset is registered."
            )
        return value

    def _class_indices(self, meta: Any, key: str) -> List[int]:
        what = "list of int indices into stuff_classes" + ("; [] if none" if key == "unseen_classes" else "")
        indices = [int(i) for i in self._require(meta, key, what)]
        bad = [i for i in indices if not 0 <= i < self._num_classes]
        if bad or len(set(indices)) != len(indices):
            raise ValueError(
                f"Dataset '{self._dataset_name}': metadata '{key}' must hold distinct indices in "
                f"0..{self._num_classes - 1} (into stuff_classes); got out-of-range {bad} in {indices}."
            )
        return indices

    @property
    def conf_matrix(self) -> np.ndarray:
        """This process's (C+1, C+1) counts so far: rows ground truth (last: ignored), columns prediction."""
        return self._conf_matrix.copy()

    def reset(self) -> None:
        self._conf_matrix = np.zeros((self._num_classes + 1, self._num_classes + 1), dtype=np.int64)
        self._num_images = 0
        self._num_skipped = 0

    def _gt_file(self, inp: Dict[str, Any]) -> str:
        file_name = inp["file_name"]
        if file_name in self._input_file_to_gt_file:
            return self._input_file_to_gt_file[file_name]
        if "sem_seg_file_name" in inp:
            return inp["sem_seg_file_name"]
        raise KeyError(
            f"No ground truth for input '{file_name}': it is not a file_name of dataset "
            f"'{self._dataset_name}' and the input has no 'sem_seg_file_name'."
        )

    def _check_labels(self, gt: np.ndarray, gt_file: str) -> None:
        """Every value of the (mapped) ground truth must be a class index or the ignore label."""
        labels = np.unique(gt)
        bad = labels[(labels != self._ignore_label) & ((labels < 0) | (labels >= self._num_classes))]
        if bad.size:
            mapped = " after the metadata 'gt_label_map'" if self._lut is not None else ""
            raise ValueError(
                f"Ground truth '{gt_file}' has labels {bad.tolist()}{mapped} that are neither class "
                f"indices 0..{self._num_classes - 1} nor ignore_label {self._ignore_label} of dataset "
                f"'{self._dataset_name}'; check the label id mapping (e.g. 1-based ids)."
            )

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, torch.Tensor]]) -> None:
        """Accumulate the confusion matrix; ``outputs[i]["sem_seg"]`` is a (C, H, W) score tensor."""
        for inp, out in zip(inputs, outputs):
            scores = out["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"Prediction for '{inp['file_name']}' has shape {tuple(scores.shape)}; expected "
                    f"({self._num_classes}, H, W) scores for the classes of '{self._dataset_name}'."
                )
            pred = scores.argmax(dim=0).cpu().numpy()
            gt_file = self._gt_file(inp)
            gt = read_index_png(gt_file)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"Prediction for '{inp['file_name']}' is {pred.shape[0]}x{pred.shape[1]} but its "
                    f"ground truth '{gt_file}' is {gt.shape[0]}x{gt.shape[1]} (HxW); resize the "
                    "prediction to the original image size."
                )
            if self._skip_no_object and not has_object_label(gt, self._no_object_labels):
                self._num_skipped += 1
                continue
            if self._lut is not None:
                gt = apply_label_map(gt, self._lut)
            self._check_labels(gt, gt_file)
            self._conf_matrix += confusion_matrix(gt, pred, self._num_classes, self._ignore_label)
            self._num_images += 1

    def evaluate(self) -> Optional["OrderedDict[str, OrderedDict[str, float]]"]:
        """Return ``{"sem_seg": metrics}`` on the main process, ``None`` on the others."""
        conf, num_images, num_skipped = self._conf_matrix, self._num_images, self._num_skipped
        if self._distributed:
            comm.synchronize()
            gathered = comm.all_gather((self._conf_matrix, self._num_images, self._num_skipped))
            if not comm.is_main_process():
                return None
            conf = np.sum([c for c, _, _ in gathered], axis=0)
            num_images = sum(n for _, n, _ in gathered)
            num_skipped = sum(k for _, _, k in gathered)

        metrics = zero_shot_metrics(conf, self._seen, self._unseen, self._class_names, self._miou_rule)
        self._log(metrics, num_images, num_skipped)
        if self._output_dir:
            self._save(metrics, conf, num_images, num_skipped)
        return OrderedDict(sem_seg=metrics)

    def _log(self, metrics: Dict[str, float], num_images: int, num_skipped: int) -> None:
        skipped = (f" ({num_skipped} skipped: no label outside {self._no_object_labels})"
                   if self._skip_no_object else "")
        self._logger.info(
            f"Zero-shot evaluation of '{self._dataset_name}': {num_images} images{skipped}, "
            f"{self._num_classes} classes ({len(self._seen)} seen, {len(self._unseen)} unseen, "
            f"evaluated jointly), ignore label {self._ignore_label}, mIoU rule '{self._miou_rule}' "
            f"({_RULE_TEXT[self._miou_rule]}), protocol: {self._protocol or 'not given'}"
        )
        table = tabulate(
            [[f"{metrics[k]:.2f}" for k in _SUMMARY_KEYS]],
            headers=list(_SUMMARY_KEYS),
            tablefmt="pipe",
            stralign="center",
            disable_numparse=True,
        )
        self._logger.info(f"Semantic segmentation results (%, mIoU rule '{self._miou_rule}'):\n" + table)

    def _save(self, metrics: Dict[str, float], conf: np.ndarray, num_images: int, num_skipped: int) -> None:
        """Write ``sem_seg_metrics.json`` (NaN written as null, which JSON allows) and the confusion
        matrix as ``sem_seg_confusion.npz`` (:mod:`.confusion_file`), both atomically."""
        def finite(value: float) -> Optional[float]:
            return None if np.isnan(value) else value

        report = {
            "dataset": self._dataset_name,
            "protocol": self._protocol,
            "weights": self._weights,
            "num_images": num_images,
            "skip_no_object_images": self._skip_no_object,
            "num_skipped_images": num_skipped,
            "gt_label_map": self._label_map,
            "ignore_label": self._ignore_label,
            "miou_rule": self._miou_rule,
            "class_names": self._class_names,
            "seen_classes": self._seen,
            "unseen_classes": self._unseen,
            "metrics": {k: finite(v) for k, v in metrics.items() if not k.startswith(("IoU-", "ACC-"))},
            "per_class_iou": {n: finite(metrics[f"IoU-{n}"]) for n in self._class_names},
            "confusion_matrix_file": CONFUSION_FILE,
            "confusion_matrix_shape": list(conf.shape),
            "confusion_matrix_layout": CONFUSION_LAYOUT,
        }
        os.makedirs(self._output_dir, exist_ok=True)
        save_confusion_matrix(self._output_dir, conf)
        path = os.path.join(self._output_dir, "sem_seg_metrics.json")
        write_json_atomic(path, report)  # mode 0644 (umask), like every other output
        self._logger.info(f"Wrote {path} and {CONFUSION_FILE}")
