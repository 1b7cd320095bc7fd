"""Benchmarks shipped with ldvc_d2, each one package that registers what it provides on import.

* :mod:`.shapes`: the synthetic compositional shapes world (the default dataset and quick start): its
  renderer, its registered datasets, and the tiny CLIP pretrained on it, shipped and cached.

Nothing under ``modeling``, ``data``, ``evaluation``, ``engine`` or ``utils`` imports a benchmark
(tests/test_import_direction.py); the package root imports this one, so registration happens on
``import ldvc_d2``.
"""
from . import shapes  # noqa: F401  (registration happens on import)
