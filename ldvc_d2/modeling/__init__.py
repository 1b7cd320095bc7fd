"""Model: prompted CLIP backbone, LCTD head (and ZegCLIP's head, the baseline), loss and the LDVC meta-architecture (registered on import)."""
from .backbone import PromptedCLIPBackbone
from .heads import LCTDHead, LocalConsensusSelfAttention, TextAdapter, ZegCLIPHead
from .losses import focal_dice_loss
from .meta_arch import LDVC

__all__ = ["LDVC", "LCTDHead", "LocalConsensusSelfAttention", "PromptedCLIPBackbone", "TextAdapter", "ZegCLIPHead", "focal_dice_loss"]
