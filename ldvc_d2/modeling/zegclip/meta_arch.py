"""ZegCLIP (Zhou et al., CVPR 2023), the baseline of LDVC's Tables 1, 4 and 7.

The same one-stage pipeline as LDVC (:class:`~ldvc_d2.modeling.decoder_segmentor.CLIPDecoderSegmentor`)
with ZegCLIP's decoder (:class:`~ldvc_d2.modeling.zegclip.head.ZegCLIPHead`: class queries attend to the
image features). Its visual prompt variant (shared projection + dropout, LayerNorm before ``ln_post``)
is a backbone option (MODEL.CLIP.VISUAL_PROMPT_PROJECTION / VISUAL_FINAL_NORM), set in configs/zegclip/.
"""
from detectron2.modeling import META_ARCH_REGISTRY

from ..decoder_segmentor import CLIPDecoderSegmentor

__all__ = ["ZegCLIP"]


@META_ARCH_REGISTRY.register()
class ZegCLIP(CLIPDecoderSegmentor):
    """ZegCLIP = prompted CLIP + ZegCLIP's decoder (``MODEL.SEM_SEG_HEAD.NAME "ZegCLIPHead"``)."""

    HEAD = "ZegCLIPHead"
