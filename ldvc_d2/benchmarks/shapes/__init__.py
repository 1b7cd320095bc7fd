"""The synthetic shapes benchmark (docs/shapes_benchmark.md), in one package:

* :mod:`.world`: the 16 colour × pattern classes (12 seen / 4 unseen) and how a scene is drawn;
* :mod:`.dataset`: the ``shapes_zs`` files, their generation and their detectron2 registration;
* :mod:`.tiny_clip`: the tiny CLIP ``LDVC-Tiny``, its pretraining recipes and their pretraining;
* :mod:`.shipped`: the default recipe's checkpoint shipped in ``assets/``;
* :mod:`.cache`: the cached checkpoint, and the ``MODEL.CLIP.PRETRAINED`` tags that resolve to it.

Importing the package registers the datasets and the tags.
"""
from . import cache, dataset  # noqa: F401  (registration happens on import)
