"""Dataset registrations. Every module here registers its datasets when imported."""
from . import shapes  # noqa: F401
from . import register_ade, register_coco_stuff, register_context, register_voc  # noqa: F401
