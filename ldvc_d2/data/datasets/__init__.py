"""Dataset registrations. Every module here registers its datasets when imported."""
from . import shapes  # noqa: F401
