"""Model: prompted CLIP backbone, LCTD head, loss and the LDVC meta-architecture (registered on import)."""
from .backbone import PromptedCLIPBackbone
from .heads import LCTDHead, LocalConsensusSelfAttention, TextAdapter
from .losses import focal_dice_loss
from .meta_arch import LDVC

__all__ = ["LDVC", "LCTDHead", "LocalConsensusSelfAttention", "PromptedCLIPBackbone", "TextAdapter", "focal_dice_loss"]
