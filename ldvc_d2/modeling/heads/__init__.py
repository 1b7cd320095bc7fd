from .lcsa import LocalConsensusSelfAttention
from .lctd import LCTDBlock, LCTDHead
from .text_adapter import TextAdapter
from .zegclip import ZegCLIPHead

__all__ = ["LCTDBlock", "LCTDHead", "LocalConsensusSelfAttention", "TextAdapter", "ZegCLIPHead"]
