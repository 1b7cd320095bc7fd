"""LDVC meta-architecture: class names in, ``sem_seg`` out (LDVC Fig. 2, §3-4).

Training (paper §4.1): the class list is the training dataset's *seen* classes (inductive), or all
of its classes (MODEL.LDVC.TRAINING_CLASSES="all": transductive / fully supervised). Labels arrive
over all classes of the benchmark; the model maps them to indices of its training class list, so an
unseen pixel becomes ``ignore_label`` (the seen-only view is derived here, never stored on disk).
Transductive self-training (DESIGN §1.5, ZegCLIP's online scheme, MODEL.LDVC.SELF_TRAINING): all
class names are known; pixels whose label is an unseen class get, as their label, the unseen class
with the highest score of the model's own (detached) prediction in the same step, without threshold.

Inference (§4.1, DESIGN §1.4): the classes are those of the input (``"class_names"`` in each input
dict, set by the test data loader from the test dataset's metadata, or given by the user for an
open vocabulary), else the model's default test classes (the first test dataset's). Scores are
sigmoid probabilities averaged over sliding windows (or one whole-image pass), optionally
calibrated by subtracting ``calibration`` from the scores of the seen classes, and resized to the
original image size, as Detectron2's semantic segmentors return them. Text embeddings do not depend
on the image: in eval mode they are cached per class list.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from torch import nn

from .losses import focal_dice_loss

__all__ = ["LDVC", "class_lists_from_metadata", "seen_score_calibration"]

logger = logging.getLogger(__name__)


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


def seen_score_calibration(cfg) -> float:
    """ZegCLIP's calibration applies to inductive models only (trained on the seen classes)."""
    return cfg.MODEL.LDVC.SEEN_SCORE_CALIBRATION if cfg.MODEL.LDVC.TRAINING_CLASSES == "seen" else 0.0


@META_ARCH_REGISTRY.register()
class LDVC(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        train_class_names: Optional[List[str]],
        train_class_ids: Optional[List[int]],
        test_class_names: Optional[List[str]] = None,
        test_seen_classes: Sequence[int] = (),
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_label: int = 255,
        loss_kwargs: Optional[Dict[str, float]] = None,
        calibration: float = 0.0,
        inference_mode: str = "slide",
        crop_size: int = 512,
        stride: int = 426,
        window_size: int = 1,
        train_size: Sequence[int] = (0, 0),
        self_training_classes: Sequence[int] = (),
    ):
        """
        Args:
            train_class_names / train_class_ids: training classes and their indices in the label maps.
            test_class_names / test_seen_classes: default inference vocabulary and which of it is seen.
            calibration: subtracted from seen-class scores at inference (0 disables).
            window_size: LCSA window in tokens; inputs are padded to multiples of patch × window.
            train_size: training crops are padded to at least this (H, W), as mmseg pads every crop
                to the crop size: the per-image focal mean then does not depend on the batch.
            self_training_classes: indices (into the training class list) of the unseen classes whose
                pixels get pseudo-labels (transductive self-training); empty = off.
        """
        super().__init__()
        if inference_mode not in ("slide", "whole"):
            raise ValueError(f"MODEL.LDVC.INFERENCE.MODE must be 'slide' or 'whole', got '{inference_mode}'.")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.train_class_names = train_class_names
        self.test_class_names = test_class_names
        self.test_seen_classes = list(test_seen_classes)
        self.ignore_label = ignore_label
        self.loss_kwargs = dict(loss_kwargs or {})
        self.calibration = calibration
        self.inference_mode = inference_mode
        self.crop_size = crop_size
        self.stride = stride
        self.pad_multiple = backbone.size_divisibility * window_size
        self.train_size = tuple(train_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        lut = torch.full((256,), ignore_label, dtype=torch.long)
        if train_class_ids is not None:
            lut[torch.tensor(train_class_ids, dtype=torch.long)] = torch.arange(len(train_class_ids))
        self.register_buffer("label_lut", lut, False)
        self.register_buffer("self_training_classes", torch.tensor(list(self_training_classes), dtype=torch.long), False)
        self._text_cache: Dict[Tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        head = build_sem_seg_head(cfg, backbone.output_shape())
        c = cfg.MODEL.LDVC
        registered = [d for d in cfg.DATASETS.TRAIN if MetadataCatalog.get(d).get("stuff_classes", None) is not None]
        lists = [class_lists_from_metadata(d, c.TRAINING_CLASSES) for d in registered]
        if any(other != lists[0] for other in lists[1:]):
            raise ValueError(f"DATASETS.TRAIN {registered} have different class lists; train on datasets that share one.")
        train_names, train_ids = lists[0] if lists else (None, None)
        st_classes = []
        if c.SELF_TRAINING:
            if c.TRAINING_CLASSES != "all" or not registered:
                raise ValueError(
                    "MODEL.LDVC.SELF_TRAINING needs MODEL.LDVC.TRAINING_CLASSES 'all' (the transductive setting "
                    "knows every class name) and a registered DATASETS.TRAIN."
                )
            unseen = MetadataCatalog.get(registered[0]).get("unseen_classes", [])
            if not len(unseen):
                raise ValueError(f"MODEL.LDVC.SELF_TRAINING: dataset '{registered[0]}' has no 'unseen_classes' metadata.")
            st_classes = [train_ids.index(i) for i in unseen]
        test_names, test_seen = None, []
        if cfg.DATASETS.TEST:
            meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
            test_names = meta.get("stuff_classes", None)
            test_seen = meta.get("seen_classes", [])
        return {
            "backbone": backbone,
            "sem_seg_head": head,
            "train_class_names": train_names,
            "train_class_ids": train_ids,
            "test_class_names": test_names,
            "test_seen_classes": test_seen,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_kwargs": {
                "focal_weight": c.LOSS.FOCAL_WEIGHT,
                "dice_weight": c.LOSS.DICE_WEIGHT,
                "alpha": c.LOSS.FOCAL_ALPHA,
                "gamma": c.LOSS.FOCAL_GAMMA,
                "ignore_as_negative": c.LOSS.IGNORE_AS_NEGATIVE,
            },
            "calibration": seen_score_calibration(cfg),
            "train_size": tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else (0, 0),
            "inference_mode": c.INFERENCE.MODE,
            "crop_size": c.INFERENCE.CROP_SIZE,
            "stride": c.INFERENCE.STRIDE,
            # LCSA needs whole windows of tokens; other heads only whole patches
            "window_size": cfg.MODEL.LCTD.WINDOW_SIZE if cfg.MODEL.SEM_SEG_HEAD.NAME == "LCTDHead" else 1,
            "self_training_classes": st_classes,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        self.clear_text_cache()  # prompts change while training
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self.clear_text_cache()  # new prompts
        return super().load_state_dict(*args, **kwargs)

    def clear_text_cache(self) -> None:
        """Forget the class embeddings cached in eval mode (one entry per class list and device)."""
        self._text_cache.clear()

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """One 3×H×W image (input format, 0-255) -> the normalised, padded 1×3×H'×W' tensor that one
        inference window feeds to the backbone (H', W' multiples of patch size × LCSA window)."""
        return self._pad(self._normalize(image), 0.0)[None]

    def text_features(self, class_names: List[str]) -> torch.Tensor:
        """C×d class embeddings; cached per class list (and device) in eval mode."""
        if self.training:
            return self.backbone.encode_text(class_names)
        key = (tuple(class_names), self.device)
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = self.backbone.encode_text(list(class_names))
        return self._text_cache[key]

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std

    def _logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Normalised B×3×H×W (H, W multiples of ``pad_multiple``) -> B×C×H/p×W/p logits."""
        return self.sem_seg_head(self.backbone(images), text)

    def forward(self, batched_inputs: List[Dict]) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        """Detectron2 format: dicts with ``image`` (3×H×W, RGB 0-255) and, in training, ``sem_seg``
        (H×W over all classes of the dataset); at inference optionally ``class_names``, ``seen_classes``
        and ``height``/``width`` (output size). Returns losses, or ``[{"sem_seg": C×height×width}]``."""
        if self.training:
            return self._forward_train(batched_inputs)
        return [self._inference_one(x) for x in batched_inputs]

    def _forward_train(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        if not self.train_class_names:
            raise ValueError(
                "LDVC has no training classes: DATASETS.TRAIN[0] must be a registered dataset with "
                "stuff_classes/seen_classes metadata."
            )
        # crops can be smaller than the crop size: pad all to the crop size (or the largest, rounded)
        h = max(max(x["image"].shape[-2] for x in batched_inputs), self.train_size[0])
        w = max(max(x["image"].shape[-1] for x in batched_inputs), self.train_size[1])
        size = self._padded_size(h, w)
        images = torch.stack([self._pad(self._normalize(x["image"]), 0.0, size) for x in batched_inputs])
        targets = torch.stack([self._pad(x["sem_seg"].to(self.device)[None], self.ignore_label, size)[0]
                               for x in batched_inputs])
        targets = self.label_lut[targets.long().clamp(0, 255)]
        logits = self._logits(images, self.text_features(self.train_class_names))
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        if len(self.self_training_classes):
            targets = self.pseudo_label(logits, targets)
        return focal_dice_loss(logits, targets, ignore_label=self.ignore_label, **self.loss_kwargs)

    @torch.no_grad()
    def pseudo_label(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Transductive labels: B×H×W ``targets`` (training-class indices) whose value is one of
        ``self_training_classes`` become the arg-max of ``logits`` (B×C×H×W) over those classes; all
        other pixels (seen classes, ignore) keep their label."""
        unseen = self.self_training_classes
        pseudo = unseen[logits.detach()[:, unseen].argmax(dim=1)]
        return torch.where(torch.isin(targets, unseen), pseudo, targets)

    def _padded_size(self, h: int, w: int) -> Tuple[int, int]:
        m = self.pad_multiple
        return math.ceil(h / m) * m, math.ceil(w / m) * m

    def _pad(self, t: torch.Tensor, value: float, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Pad C×H×W on the bottom/right to ``size``, by default the next multiples of ``pad_multiple``."""
        h, w = t.shape[-2:]
        size = size or self._padded_size(h, w)
        return F.pad(t, (0, size[1] - w, 0, size[0] - h), value=value)

    def _window_scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Sigmoid scores C×H×W of one normalised crop of any size."""
        h, w = image.shape[-2:]
        logits = self._logits(self._pad(image, 0.0)[None], text)  # = preprocess() of an unnormalised image
        logits = F.interpolate(logits, scale_factor=self.backbone.size_divisibility, mode="bilinear",
                               align_corners=False)
        return logits[0, :, :h, :w].sigmoid()

    @torch.no_grad()
    def _inference_one(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        names = inputs.get("class_names", self.test_class_names)
        if not names:
            raise ValueError(
                "No class names for inference: give 'class_names' in the input dict, or set "
                "DATASETS.TEST to a registered dataset with stuff_classes metadata."
            )
        seen = inputs.get("seen_classes", self.test_seen_classes if names is self.test_class_names else [])
        text = self.text_features(list(names))
        image = self._normalize(inputs["image"])
        if self.inference_mode == "whole":
            scores = self._window_scores(image, text)
        else:
            scores = self._slide(image, text)
        if self.calibration and len(seen):
            scores[list(seen)] -= self.calibration
        height, width = inputs.get("height", scores.shape[-2]), inputs.get("width", scores.shape[-1])
        if (height, width) != tuple(scores.shape[-2:]):
            scores = F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return {"sem_seg": scores}

    def _slide(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Average of the window scores of crop_size windows every ``stride`` pixels (mmseg's grid)."""
        _, h, w = image.shape
        crop, stride = self.crop_size, self.stride
        rows = max(math.ceil((h - crop) / stride), 0) + 1
        cols = max(math.ceil((w - crop) / stride), 0) + 1
        total = count = None
        for r in range(rows):
            for c in range(cols):
                y1, x1 = min(r * stride, max(h - crop, 0)), min(c * stride, max(w - crop, 0))
                y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
                s = self._window_scores(image[:, y1:y2, x1:x2], text)
                if total is None:
                    total = s.new_zeros(s.shape[0], h, w)
                    count = s.new_zeros(1, h, w)
                total[:, y1:y2, x1:x2] += s
                count[:, y1:y2, x1:x2] += 1
        return total / count
