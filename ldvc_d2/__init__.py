"""ldvc_d2: Language-Driven Visual Consensus (LDVC, arXiv 2403.08426) as a Detectron2 project.

Importing the package applies the detectron2 v0.6 compatibility shims (:mod:`ldvc_d2.compat`) and
registers the meta-architecture ``LDVC``, the backbone ``PromptedCLIPBackbone``, the semantic heads,
the zero-shot datasets and the evaluator, then imports the dataset registrations of your own named
by the environment variable ``LDVC_DATASETS`` (:func:`ldvc_d2.data.load_user_modules`).
"""
__version__ = "0.1.0"

from . import compat  # noqa: E402

compat.apply()

from . import data, evaluation, modeling, shapes_clip  # noqa: E402  (registration happens on import)
from .config import add_ldvc_config  # noqa: E402

data.load_user_modules()  # last: user files may import anything from ldvc_d2

__all__ = ["add_ldvc_config", "data", "evaluation", "modeling", "compat"]
