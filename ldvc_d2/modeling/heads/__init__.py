from .lcsa import LocalConsensusSelfAttention
from .lctd import LCTDBlock, LCTDHead
from .text_adapter import TextAdapter

__all__ = ["LCTDBlock", "LCTDHead", "LocalConsensusSelfAttention", "TextAdapter"]
