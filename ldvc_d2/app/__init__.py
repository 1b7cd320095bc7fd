"""A browser app on top of the package: an image, any vocabulary, several methods side by side.

``python -m ldvc_d2.app`` (``make app``) serves it on 127.0.0.1 (docs/app.md). Install its dependency
with ``pip install -e ".[app]"`` (Gradio). The models never import this package; it uses
:class:`~ldvc_d2.predictor.OpenVocabPredictor` like ``demo/demo.py`` does.

* :mod:`.methods`: the methods offered (fixed at start) and the cache of built models;
* :mod:`.inputs`: uploads, vocabularies, examples and class lists, checked;
* :mod:`.render`: one method on one image: timing, overlay, label map, score maps;
* :mod:`.page`: the Gradio page.
"""
