"""DeOP's mask proposals (stage 2): a MaskFormer trained on the seen classes (SEED_SYSTEMS §4.1 D1).

``build_proposal_network(cfg)`` -> module whose forward(normalised B×3×H×W) returns B×N×H/4×W/4 mask
logits; ``DeOPProposals`` (registered meta-architecture) trains it with train_net.py; ``proposal_recall`` /
``segment_best_iou`` measure the recall of its masks (supplement Table 8, ``tools/proposal_recall.py``); ``r101c``
maps detectron2's R101c ImageNet weights (R-103.pkl) onto timm's ``resnet101s`` and adds its res5 multi-grid.
"""
from .build import build_proposal_network, proposal_num_classes
from .meta_arch import DeOPProposals
from .network import MaskFormerProposals, semantic_to_masks
from .recall import proposal_recall, segment_best_iou

__all__ = ["DeOPProposals", "MaskFormerProposals", "build_proposal_network", "proposal_num_classes", "proposal_recall",
           "segment_best_iou", "semantic_to_masks"]
