"""ldvc_d2: Language-Driven Visual Consensus (LDVC, arXiv 2403.08426) as a Detectron2 project.

Importing the package applies the detectron2 v0.6 compatibility shims (:mod:`ldvc_d2.compat`) and
registers the meta-architecture ``LDVC``, the backbone ``PromptedCLIPBackbone``, the semantic heads,
the zero-shot datasets and the evaluator.
"""
__version__ = "0.1.0"

from . import compat  # noqa: E402

compat.apply()

from . import data, evaluation, modeling, shapes_clip  # noqa: E402  (registration happens on import)
from .config import add_ldvc_config  # noqa: E402

__all__ = ["add_ldvc_config", "data", "evaluation", "modeling", "compat"]
