"""Building DeOP's proposal network from ``MODEL.DEOP.PROPOSAL_NET`` (modeling/deop/config.py).

``transformers`` is an optional extra (``pip install -e ".[deop]"``): it is imported here, on first use, and
its absence is an error saying what to install. The network is built offline with random weights: the timm
backbone is given as an explicit ``TimmBackboneConfig`` (a backbone *name* makes ``transformers`` look it up
on the Hugging Face Hub), and ImageNet weights come from a local file only (``BACKBONE_WEIGHTS``).
"""
import logging
from typing import Optional

import torch
from torch import nn

from ...segmentor_config import class_lists_from_metadata, registered_train_sets
from ..weight_files import read_state_dict
from .network import MaskFormerProposals
from .r101c import apply_multi_grid, detectron2_resnet_to_timm, is_detectron2_resnet

__all__ = ["build_proposal_network", "proposal_num_classes"]

logger = logging.getLogger(__name__)


def proposal_num_classes(cfg) -> int:
    """Classes of the proposal network's class head: 1 when class-agnostic, else MODEL.DEOP.PROPOSAL_NET.NUM_CLASSES
    or (0) the number of training classes of DATASETS.TRAIN[0] (its seen classes, inductive)."""
    p = cfg.MODEL.DEOP.PROPOSAL_NET
    if p.CLASS_AGNOSTIC:
        return 1
    if int(p.NUM_CLASSES) > 0:
        return int(p.NUM_CLASSES)
    registered = registered_train_sets(cfg)
    if not registered:
        raise ValueError("MODEL.DEOP.PROPOSAL_NET.NUM_CLASSES is 0 (automatic) but DATASETS.TRAIN names no registered "
                         "dataset to count the training classes of; set DATASETS.TRAIN or NUM_CLASSES.")
    return len(class_lists_from_metadata(registered[0], cfg.MODEL.SEGMENTOR.TRAINING_CLASSES)[0])


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("DeOP's proposal network (MODEL.DEOP.PROPOSAL_NET) needs Hugging Face transformers: "
                          'pip install -e ".[deop]"') from e
    return transformers


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load local ImageNet weights into the timm ``backbone``: a torchvision/timm ResNet state dict (classifier
    ``fc.*`` dropped) or a detectron2 ResNet ``.pkl`` such as R-103.pkl, the released R101c's (renamed by
    :func:`~.r101c.detectron2_resnet_to_timm`; needs BACKBONE "resnet101s").

    Read by DeOP's one checkpoint reader (:func:`~ldvc_d2.modeling.deop.weight_files.read_state_dict`, the safe
    loader underneath), which also unwraps the "state_dict" / "model" keys.
    """
    state = read_state_dict(path, "MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS",
                            hint="give a local torchvision/timm ImageNet checkpoint of MODEL.DEOP.PROPOSAL_NET.BACKBONE "
                                 "or detectron2's R-103.pkl (BACKBONE 'resnet101s'), or '' for random init.",
                            unwrap=("state_dict", "model"))
    detectron2 = is_detectron2_resnet(state)
    if detectron2:
        state = detectron2_resnet_to_timm(state)
        hint = ("A detectron2 DeepLab ResNet file (R-103.pkl = R101c) fits MODEL.DEOP.PROPOSAL_NET.BACKBONE "
                "'resnet101s' only.")
    else:
        state = {k: torch.as_tensor(v) for k, v in state.items() if not k.startswith("fc.")}
        hint = "Give the weights of MODEL.DEOP.PROPOSAL_NET.BACKBONE (torchvision or timm key names)."
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS '{path}' does not fit the backbone: {e} {hint}") from None
    missing, unexpected = ([k for k in keys if not k.endswith("num_batches_tracked")] for keys in (missing, unexpected))
    if missing or unexpected:
        raise ValueError(f"MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS '{path}' does not fit the backbone: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}. {hint}")
    logger.info(f"Proposal network backbone loaded from '{path}'{' (detectron2 names mapped to timm)' if detectron2 else ''}.")


def build_proposal_network(cfg, num_classes: Optional[int] = None) -> MaskFormerProposals:
    """The proposal network of a config; ``forward(normalised B×3×H×W)`` -> B×N×H/4×W/4 mask logits.

    ``num_classes`` overrides :func:`proposal_num_classes` (the class head's size must equal the stage-2
    checkpoint's for DeOP's stage 3 to load it).
    """
    tf = _import_transformers()
    p = cfg.MODEL.DEOP.PROPOSAL_NET
    k = proposal_num_classes(cfg) if num_classes is None else num_classes
    backbone = tf.TimmBackboneConfig(backbone=p.BACKBONE, out_indices=(1, 2, 3, 4), use_pretrained_backbone=False,
                                     freeze_batch_norm_2d=p.FREEZE_BACKBONE_BN)
    decoder = {"model_type": "detr", "decoder_layers": p.DEC_LAYERS, "d_model": p.HIDDEN_DIM,
               "decoder_attention_heads": p.NUM_HEADS, "decoder_ffn_dim": p.DIM_FEEDFORWARD,
               "dropout": p.DROPOUT, "attention_dropout": p.DROPOUT, "activation_dropout": p.DROPOUT,
               "num_queries": p.NUM_QUERIES, "encoder_layers": 0}
    config = tf.MaskFormerConfig(
        backbone_config=backbone, decoder_config=decoder, num_labels=k, num_queries=p.NUM_QUERIES,
        fpn_feature_size=p.PIXEL_DECODER_DIM, mask_feature_size=p.MASK_DIM, no_object_weight=p.NO_OBJECT_WEIGHT,
        cross_entropy_weight=p.CE_WEIGHT, mask_weight=p.MASK_WEIGHT, dice_weight=p.DICE_WEIGHT,
        use_auxiliary_loss=p.DEEP_SUPERVISION,
    )
    try:
        maskformer = tf.MaskFormerForInstanceSegmentation(config)
    except RuntimeError as e:  # timm's error for an unknown model name
        raise ValueError(f"MODEL.DEOP.PROPOSAL_NET.BACKBONE '{p.BACKBONE}': {e}") from e
    backbone_module = maskformer.model.pixel_level_module.encoder._backbone
    if len(p.RES5_MULTI_GRID):
        apply_multi_grid(backbone_module, list(p.RES5_MULTI_GRID))
    if p.MASK_LOSS_ONLY:  # the paper's class-agnostic network: masks are matched and trained by focal + dice only
        maskformer.matcher.cost_class = 0.0
        maskformer.class_predictor.requires_grad_(False)
    if p.BACKBONE_WEIGHTS:
        load_backbone_weights(backbone_module, p.BACKBONE_WEIGHTS)
    else:
        why = ("MODEL.DEOP.PROPOSAL_NET.ALLOW_RANDOM_BACKBONE" if p.ALLOW_RANDOM_BACKBONE
               else "a stage-3 build loads the stage-2 checkpoint instead")
        logger.info(f"Proposal network backbone '{p.BACKBONE}' randomly initialised (MODEL.DEOP.PROPOSAL_NET."
                    f"BACKBONE_WEIGHTS ''; {why}).")
    return MaskFormerProposals(maskformer, class_agnostic=p.CLASS_AGNOSTIC, mask_loss_only=p.MASK_LOSS_ONLY,
                               backbone_lr_multiplier=p.BACKBONE_LR_MULTIPLIER)
