"""Dataset registrations. Every module here registers its datasets when imported; ``folder`` registers
folders of your own (:func:`register_zero_shot_folder`). The shapes datasets are registered by their
benchmark (:mod:`ldvc_d2.benchmarks.shapes.dataset`)."""
from . import register_ade, register_cityscapes, register_coco_stuff, register_context, register_voc  # noqa: F401
from .folder import add_register_argument, load_user_modules, register_zero_shot_folder

__all__ = ["add_register_argument", "load_user_modules", "register_zero_shot_folder"]
