"""The LDVC meta-architecture (Language-Driven Visual Consensus, arXiv 2403.08426, Fig. 2).

VLPT-prompted CLIP (§3.2, :class:`~ldvc_d2.modeling.backbone.PromptedCLIPBackbone`) + the Local Consensus
Transformer Decoder (§3.3, :class:`~ldvc_d2.modeling.ldvc.lctd.LCTDHead`): image features query the class
embeddings, logits ``S = T_new V_o^T`` (13), sigmoid scores; trained with ZegCLIP's focal + dice loss
(§4.1). Everything else (class lists, inference, calibration) is the shared
:class:`~ldvc_d2.modeling.segmentor.ZeroShotSegmentor`.
"""
from detectron2.modeling import META_ARCH_REGISTRY

from ..decoder_segmentor import CLIPDecoderSegmentor

__all__ = ["LDVC"]


@META_ARCH_REGISTRY.register()
class LDVC(CLIPDecoderSegmentor):
    """LDVC = prompted CLIP + LCTD head (``MODEL.SEM_SEG_HEAD.NAME "LCTDHead"``)."""

    HEAD = "LCTDHead"
