"""DeOP stage 2: training the proposal network on the seen classes (SEED_SYSTEMS §4.1 D1, §4.2).

``DeOPProposals`` holds the network as ``proposal_net`` (DeOP's stage 3 loads this checkpoint's
``proposal_net.*`` tensors and freezes them). Training: images and the seen-only label view of
:class:`~ldvc_d2.modeling.segmentor.ZeroShotSegmentor` (unseen pixels are ignore, as zsseg's "base" sets),
MaskFormer's matching losses (:mod:`.network`).

``--eval-only`` (with the class head, ``CLASS_AGNOSTIC False``): MaskFormer's semantic inference
S_k(x) = Σ_n softmax(c_n)_k · σ(M_n(x)) over the K seen training classes (no-object dropped), through the
plugin's evaluator. A test class that is not a training class scores 0 everywhere, so mIoU(S) measures the
proposals' seen-class quality and mIoU(U)/hIoU are 0 by construction. The "class embedding" of a test class
name is its one-hot row over the training classes (:meth:`encode_text`), which maps the K scores onto any
test vocabulary. A class-agnostic network has no semantic output: its ``--eval-only`` is refused.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ...segmentor import ZeroShotSegmentor
from ...segmentor_config import segmentor_config
from .build import build_proposal_network

__all__ = ["DeOPProposals"]


@META_ARCH_REGISTRY.register()
class DeOPProposals(ZeroShotSegmentor):
    """Stage 2 of DeOP: a MaskFormer proposal network trained on the seen classes."""

    PAD_MULTIPLE = 32  # the backbone's output stride: every FPN level then has an integer size

    @configurable
    def __init__(self, *, proposal_net: nn.Module, **kwargs):
        """proposal_net: :class:`~ldvc_d2.modeling.deop.proposals.network.MaskFormerProposals`; kwargs:
        :class:`ZeroShotSegmentor`'s."""
        super().__init__(pad_multiple=self.PAD_MULTIPLE, **kwargs)
        self.proposal_net = proposal_net
        if self.train_class_names is not None and not proposal_net.class_agnostic \
                and len(self.train_class_names) != proposal_net.num_classes:
            raise ValueError(f"MODEL.DEOP.PROPOSAL_NET.NUM_CLASSES ({proposal_net.num_classes}) differs from the "
                             f"{len(self.train_class_names)} training classes of DATASETS.TRAIN; set it to 0 (automatic).")

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        # no seen-score calibration: the unseen classes score 0 here, a calibrated seen score could fall below
        return {**segmentor_config(cfg), "calibration": 0.0, "proposal_net": build_proposal_network(cfg)}

    def lr_multipliers(self) -> Dict[str, Tuple[str, float]]:
        """The ResNet at lr × MODEL.DEOP.PROPOSAL_NET.BACKBONE_LR_MULTIPLIER (released MaskFormer: 0.1), the rest
        at the base lr (used by :func:`ldvc_d2.solver.param_groups`)."""
        net = self.proposal_net
        return {f"proposal_net.{net.BACKBONE}": ("backbone", net.backbone_lr_multiplier)}

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        return (f"{super().describe_protocol(cfg)}, MaskFormer semantic inference over the training classes of "
                f"{list(cfg.DATASETS.TRAIN)} (other test classes score 0: a seen-class diagnostic of the proposals)")

    def encode_text(self, class_names: List[str]) -> torch.Tensor:
        """C test names -> C×K one-hot rows over the K training classes (zero rows for other names)."""
        if self.proposal_net.class_agnostic:
            raise ValueError("A class-agnostic proposal network (MODEL.DEOP.PROPOSAL_NET.CLASS_AGNOSTIC True) has no "
                             "class scores to evaluate; evaluate it inside DeOP (stage 3) instead.")
        if not self.train_class_names:
            raise ValueError("DeOPProposals maps test classes onto its training classes: set DATASETS.TRAIN to the "
                             "registered dataset it was trained on.")
        rows = torch.zeros(len(class_names), len(self.train_class_names), device=self.device)
        for i, name in enumerate(class_names):
            if name in self.train_class_names:
                rows[i, self.train_class_names.index(name)] = 1.0
        return rows

    def batch_window_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """B windows -> B×C×H×W scores: the semantic inference above, upsampled from 1/4 to the window."""
        class_logits, mask_logits, _ = self.proposal_net.predict(images)
        semantic = torch.einsum("bnk,bnhw->bkhw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())
        semantic = F.interpolate(semantic, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.einsum("ck,bkhw->bchw", text.to(semantic.dtype), semantic)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, targets = self.training_batch(batched_inputs)
        return self.proposal_net.losses(images, targets, self.ignore_label)
