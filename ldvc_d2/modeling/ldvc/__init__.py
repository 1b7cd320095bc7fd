"""LDVC: the meta-architecture, the LCTD head (eqs. 3-7, 13) and LCSA (eqs. 8-12), registered on import."""
from .lcsa import LocalConsensusSelfAttention
from .lctd import LCTDBlock, LCTDHead
from .meta_arch import LDVC

__all__ = ["LDVC", "LCTDBlock", "LCTDHead", "LocalConsensusSelfAttention"]
