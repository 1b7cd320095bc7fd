"""Data: zero-shot dataset registrations (``datasets``) and the training/test mappers."""
from . import datasets  # noqa: F401  (registers every dataset on import)
from .mapper import LDVCTestMapper, LDVCTrainMapper

__all__ = ["LDVCTestMapper", "LDVCTrainMapper"]
