"""Models, each method in its own folder over shared parts (registered on import).

Shared: ``clip/`` (open_clip towers: loading, prompted vision/text encoders), ``backbone.py``
(PromptedCLIPBackbone), ``segmentor.py`` (ZeroShotSegmentor: class lists, text cache, slide/whole
inference, calibration, protocol line), ``decoder_segmentor.py`` (prompted CLIP + decoder head, the
pipeline LDVC and ZegCLIP share), ``text_adapter.py``, ``losses.py``. Methods: ``ldvc/``, ``zegclip/``, ``cliptrase/``, ``deop/``, ``c2s/``;
training-free on ``training_free.py``: ``maskclip/``, ``sclip/``, ``clearclip/``, ``naclip/``, ``proxyclip/``.
"""
from .backbone import PromptedCLIPBackbone
from .c2s import C2S
from .clearclip import ClearCLIP
from .cliptrase import CLIPtrase
from .decoder_segmentor import CLIPDecoderSegmentor
from .deop import DeOP
from .ldvc import LDVC, LCTDBlock, LCTDHead, LocalConsensusSelfAttention
from .losses import focal_dice_loss
from .maskclip import MaskCLIP
from .naclip import NACLIP
from .proxyclip import ProxyCLIP
from .sclip import SCLIP
from .segmentor import ZeroShotSegmentor, inference_model
from .text_adapter import TextAdapter
from .zegclip import ZegCLIP, ZegCLIPHead

__all__ = [
    "C2S", "CLIPDecoderSegmentor", "CLIPtrase", "ClearCLIP", "MaskCLIP", "NACLIP", "ProxyCLIP", "SCLIP", "DeOP", "LDVC", "LCTDBlock", "LCTDHead", "LocalConsensusSelfAttention", "PromptedCLIPBackbone",
    "TextAdapter", "ZegCLIP", "ZegCLIPHead", "ZeroShotSegmentor", "focal_dice_loss", "inference_model",
]
