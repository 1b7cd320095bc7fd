"""The one-stage pipeline LDVC and its ZegCLIP baseline share (LDVC Fig. 2; ZegCLIP §3).

    image ─► prompted CLIP image encoder ─► {dense V_l, global V_g, intermediate V_j}
    class names ─► (prompted) CLIP text encoder ─► T
    decoder head(features, T) ─► B×C×h×w logits ─► ×patch bilinear ─► sigmoid scores

Only the decoder head differs between the two methods (LDVC's LCTD, ZegCLIP's class-query decoder),
so each is a thin subclass naming its head. Training (LDVC §4.1, following ZegCLIP): focal + dice on
the logits upsampled to the crop, over the training classes (:func:`~ldvc_d2.modeling.losses.focal_dice_loss`);
transductive self-training (DESIGN §1.5, ZegCLIP's online scheme, MODEL.SEGMENTOR.SELF_TRAINING): all class
names are known; pixels whose label is an unseen class get, as their label, the unseen class with the
highest score of the model's own (detached) prediction in the same step, without threshold.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_backbone, build_sem_seg_head
from torch import nn

from .losses import focal_dice_loss
from .segmentor import ZeroShotSegmentor
from .segmentor_config import registered_train_sets, seen_score_calibration, segmentor_config

__all__ = ["CLIPDecoderSegmentor"]


class CLIPDecoderSegmentor(ZeroShotSegmentor):
    """Prompted CLIP backbone + a decoder head (``MODEL.SEM_SEG_HEAD.NAME``); subclasses set ``HEAD``."""

    HEAD: str = ""  # the registered head this method uses

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        loss_kwargs: Optional[Dict[str, float]] = None,
        self_training_classes: Sequence[int] = (),
        **kwargs,
    ):
        """
        Args:
            backbone / sem_seg_head: :class:`~ldvc_d2.modeling.backbone.PromptedCLIPBackbone` and a head
                ``head(features, text) -> B×C×h×w`` with a ``token_divisibility`` attribute.
            loss_kwargs: arguments of :func:`focal_dice_loss`.
            self_training_classes: indices (into the training class list) of the unseen classes whose
                pixels get pseudo-labels (transductive self-training); empty = off.
            kwargs: :class:`ZeroShotSegmentor`'s (``pad_multiple`` is set here).
        """
        pad = backbone.size_divisibility * getattr(sem_seg_head, "token_divisibility", 1)
        super().__init__(pad_multiple=pad, **kwargs)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.loss_kwargs = dict(loss_kwargs or {})
        self.register_buffer("self_training_classes", torch.tensor(list(self_training_classes), dtype=torch.long), False)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        head_name = cfg.MODEL.SEM_SEG_HEAD.NAME
        if cls.HEAD and head_name != cls.HEAD:
            raise ValueError(
                f"MODEL.META_ARCHITECTURE '{cls.__name__}' uses MODEL.SEM_SEG_HEAD.NAME '{cls.HEAD}', got "
                f"'{head_name}'. Use MODEL.META_ARCHITECTURE 'ZegCLIP' for 'ZegCLIPHead' and 'LDVC' for 'LCTDHead'."
            )
        backbone = build_backbone(cfg)
        head = build_sem_seg_head(cfg, backbone.output_shape())
        args = segmentor_config(cfg)
        c = cfg.MODEL.SEGMENTOR
        st_classes = []
        if c.SELF_TRAINING:
            registered = registered_train_sets(cfg)
            if c.TRAINING_CLASSES != "all" or not registered:
                raise ValueError(
                    "MODEL.SEGMENTOR.SELF_TRAINING needs MODEL.SEGMENTOR.TRAINING_CLASSES 'all' (the transductive setting "
                    "knows every class name) and a registered DATASETS.TRAIN."
                )
            unseen = MetadataCatalog.get(registered[0]).get("unseen_classes", [])
            if not len(unseen):
                raise ValueError(f"MODEL.SEGMENTOR.SELF_TRAINING: dataset '{registered[0]}' has no 'unseen_classes' metadata.")
            st_classes = [args["train_class_ids"].index(i) for i in unseen]
        args.update({
            "backbone": backbone,
            "sem_seg_head": head,
            "loss_kwargs": {
                "focal_weight": c.LOSS.FOCAL_WEIGHT,
                "dice_weight": c.LOSS.DICE_WEIGHT,
                "alpha": c.LOSS.FOCAL_ALPHA,
                "gamma": c.LOSS.FOCAL_GAMMA,
                "ignore_as_negative": c.LOSS.IGNORE_AS_NEGATIVE,
            },
            "self_training_classes": st_classes,
        })
        return args

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        return (f"{super().describe_protocol(cfg)}, seen-score calibration {seen_score_calibration(cfg)}, "
                f"trained on {cfg.MODEL.SEGMENTOR.TRAINING_CLASSES} classes of {list(cfg.DATASETS.TRAIN)}")

    def encode_text(self, class_names: List[str]) -> torch.Tensor:
        return self.backbone.encode_text(class_names)

    def logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Normalised B×3×H×W (H, W multiples of ``pad_multiple``) -> B×C×H/p×W/p logits."""
        return self.sem_seg_head(self.backbone(images), text)

    def batch_window_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """B windows in one pass (backbone and head take batches) -> B×C×H×W sigmoid scores."""
        logits = F.interpolate(self.logits(images, text), scale_factor=self.backbone.size_divisibility,
                               mode="bilinear", align_corners=False)
        return logits.sigmoid()

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, targets = self.training_batch(batched_inputs)
        logits = self.logits(images, self.text_features(self.train_class_names))
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
