"""ldvc_d2: Language-Driven Visual Consensus (LDVC, arXiv 2403.08426) as a Detectron2 project.

Importing the package applies the detectron2 v0.6 compatibility shims (:mod:`ldvc_d2.compat`) and
registers the meta-architecture ``LDVC``, the backbone ``PromptedCLIPBackbone``, the semantic heads,
the zero-shot datasets, the evaluator and the shapes benchmark (:mod:`ldvc_d2.benchmarks`: its datasets
and tiny CLIP), then imports the dataset registrations of your own named by the environment variable
``LDVC_DATASETS`` (:func:`ldvc_d2.data.load_user_modules`).
"""
__version__ = "0.1.0"

from . import compat  # noqa: E402

compat.apply()

from . import benchmarks, data, evaluation, modeling  # noqa: E402  (registration happens on import)
from .config import add_ldvc_config  # noqa: E402

data.load_user_modules()  # last: user files may import anything from ldvc_d2

__all__ = ["add_ldvc_config", "benchmarks", "data", "evaluation", "modeling", "compat"]
