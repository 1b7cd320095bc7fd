"""Data: zero-shot dataset registrations (``datasets``) and the training/test mappers."""
from . import datasets  # noqa: F401  (registers every dataset on import)
from .datasets import add_register_argument, load_user_modules, register_zero_shot_folder
from .mapper import LDVCTestMapper, LDVCTrainMapper

__all__ = ["LDVCTestMapper", "LDVCTrainMapper", "add_register_argument", "load_user_modules", "register_zero_shot_folder"]
