"""The ZegCLIP baseline: its meta-architecture and decoder head, registered on import."""
from .head import ZegCLIPHead
from .meta_arch import ZegCLIP

__all__ = ["ZegCLIP", "ZegCLIPHead"]
