"""DeOP's proposal stream P (SEED_SYSTEMS §4.1 D1): a MaskFormer giving N mask logits at 1/4 resolution.

The network is the MaskFormer of Hugging Face ``transformers`` (``MaskFormerForInstanceSegmentation``:
timm ResNet, FPN pixel decoder with GroupNorm, DETR transformer decoder over N learned queries, MLP mask
embeddings dotted with the per-pixel embeddings), built from our config with random weights, offline.
Its criterion is the released recipe's (D1): Hungarian matching with ``scipy.optimize.linear_sum_assignment``
on cost 1·class + 20·focal + 1·dice, losses CE (no-object weight 0.1) + 20·sigmoid focal + 1·dice, on the
last and (deep supervision) every earlier decoder layer.

Why ``transformers`` rather than our own MaskFormer (a well-kept implementation is preferred where it
fits): its MaskFormer *is* D1's architecture and criterion (the same pixel decoder, decoder, mask head,
matcher costs, loss weights and no-object weight), it builds with random weights without network access
when given an explicit timm backbone config, and a tiny instance runs in the CPU tests. Only the per-layer
predictions of deep supervision are assembled here from its modules (:meth:`MaskFormerProposals.predict`).
Differences from the original MaskFormer, kept: the matcher compares masks at the prediction's resolution
(targets resized nearest) instead of upsampling predictions; the number of masks normalising the mask losses
is not summed over processes under detectron2's DDP (it is under ``accelerate``).

Targets: a B×H×W map of training-class indices (``ignore_label`` elsewhere) becomes, per image, one binary
mask per class present and its label (``0`` for every mask when class-agnostic); ignore pixels belong to no
mask, as in MaskFormer's semantic training.
"""
from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = ["MaskFormerProposals", "semantic_to_masks"]


def semantic_to_masks(target: torch.Tensor, ignore_label: int, class_agnostic: bool = False
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """H×W class indices -> (K×H×W float binary masks, K labels) of the K classes present."""
    classes = [int(c) for c in torch.unique(target) if int(c) != ignore_label]
    masks = torch.stack([(target == c) for c in classes]).float() if classes else target.new_zeros((0, *target.shape)).float()
    labels = torch.tensor([0 if class_agnostic else c for c in classes], dtype=torch.long, device=target.device)
    return masks, labels


class MaskFormerProposals(nn.Module):
    """Wraps a ``transformers`` MaskFormer: ``forward(images)`` -> B×N×H/4×W/4 mask logits.

    Args:
        maskformer: a ``MaskFormerForInstanceSegmentation`` (see :func:`build_proposal_network`).
        class_agnostic: its targets carry one "object" class (the paper's class-agnostic MaskFormer).
        mask_loss_only: no class cross-entropy in :meth:`losses` (the paper's stage 2 trains the class-agnostic
            network with the mask losses only; the builder also zeroes the matcher's class cost).
        backbone_lr_multiplier: lr × of the ResNet when trained (MODEL.DEOP.PROPOSAL_NET.BACKBONE_LR_MULTIPLIER).
    """

    BACKBONE = "maskformer.model.pixel_level_module.encoder"  # prefix of the timm ResNet's parameters

    def __init__(self, maskformer: nn.Module, *, class_agnostic: bool = False, mask_loss_only: bool = False,
                 backbone_lr_multiplier: float = 1.0):
        super().__init__()
        self.maskformer = maskformer
        self.class_agnostic, self.mask_loss_only = class_agnostic, mask_loss_only
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.num_classes = maskformer.config.num_labels
        self.num_queries = maskformer.config.decoder_config.num_queries

    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[Dict[str, torch.Tensor]]]:
        """Normalised B×3×H×W -> (B×N×(K+1) class logits, B×N×H/4×W/4 mask logits, the earlier decoder
        layers' predictions as dicts with ``class_queries_logits``/``masks_queries_logits`` (deep
        supervision, in training only; else empty)).

        Predictions come from every decoder layer's output after the decoder's final LayerNorm, as DETR's
        and MaskFormer's deep supervision (``transformers``' own ``get_logits`` also scores the all-zero
        input queries and un-normalised layer outputs, so it is not used).
        """
        mf = self.maskformer
        deep = self.training and mf.config.use_auxiliary_loss
        outputs = mf.model(pixel_values=images, output_hidden_states=deep, return_dict=True)
        if deep:
            norm = mf.model.transformer_module.decoder.layernorm
            layers = outputs.transformer_decoder_hidden_states[1:]  # [0] is the decoder's (zero) input
            states = torch.stack([norm(h) for h in layers[:-1]] + [outputs.transformer_decoder_last_hidden_state])
        else:
            states = outputs.transformer_decoder_last_hidden_state[None]
        class_logits = mf.class_predictor(states)
        mask_logits = torch.einsum("lbqc,bchw->lbqhw", mf.mask_embedder(states), outputs.pixel_decoder_last_hidden_state)
        auxiliary = [{"class_queries_logits": c, "masks_queries_logits": m}
                     for c, m in zip(class_logits[:-1], mask_logits[:-1])]
        return class_logits[-1], mask_logits[-1], auxiliary

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised B×3×H×W -> B×N×H/4×W/4 mask logits (the proposals M_n of D1)."""
        return self.predict(images)[1]

    def losses(self, images: torch.Tensor, targets: torch.Tensor, ignore_label: int) -> Dict[str, torch.Tensor]:
        """Images B×3×H×W and targets B×H×W (training-class indices or ``ignore_label``) -> the weighted
        losses of D1: ``loss_cross_entropy`` (not with ``mask_loss_only``), ``loss_mask`` (focal), ``loss_dice``,
        and ``..._i`` for decoder layer i with deep supervision."""
        class_logits, mask_logits, auxiliary = self.predict(images)
        masks, labels = zip(*[semantic_to_masks(t, ignore_label, self.class_agnostic) for t in targets])
        if any(len(lab) and int(lab.max()) >= self.num_classes for lab in labels):
            raise ValueError(f"Proposal targets hold class indices >= the network's {self.num_classes} classes; "
                             "MODEL.DEOP.PROPOSAL_NET.NUM_CLASSES must match the training classes (0 = automatic).")
        losses = self.maskformer.get_loss_dict(mask_logits, class_logits, list(masks), list(labels), auxiliary or None)
        if self.mask_loss_only:
            losses = {k: v for k, v in losses.items() if not k.startswith("loss_cross_entropy")}
        return losses
