"""Which methods the app offers, and the models it keeps built.

A method is a name, a config file and a weights file (empty for a training-free method), fixed when the
server starts (:func:`default_methods`, or ``--method`` flags): the page only picks among their names,
so nothing it sends chooses a file. Models are built on first use and kept, keyed by config, weights and
device (:class:`ModelCache`).
"""
import logging
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..checkpoint import training_free
from ..predictor import OpenVocabPredictor, load_config

__all__ = ["DEFAULT_CONFIGS", "Method", "ModelCache", "clip_weights_available", "default_methods", "parse_method"]

logger = logging.getLogger(__name__)

# (name on the page, config). Training-free configs are offered when their CLIP weights are at hand (the
# shapes CLIP ships with the package); trained ones when <OUTPUT_DIR>/model_final.pth exists.
DEFAULT_CONFIGS: Tuple[Tuple[str, str], ...] = (
    ("CLIPtrase (shapes CLIP)", "configs/cliptrase/shapes.yaml"),
    ("frozen CLIP (shapes CLIP, patch-text similarity)", "configs/cliptrase/shapes_clip.yaml"),
    ("LDVC (shapes, make demo)", "configs/demo.yaml"),
    ("LDVC (shapes)", "configs/shapes/ldvc.yaml"),
    ("ZegCLIP (shapes)", "configs/shapes/zegclip.yaml"),
    ("frozen CLIP + LCTD head (shapes)", "configs/shapes/frozen_clip.yaml"),
    ("DeOP (shapes)", "configs/deop/shapes.yaml"),
    ("C2S (shapes)", "configs/c2s/shapes.yaml"),
    ("CLIPtrase (ViT-B/16 CLIP)", "configs/cliptrase/voc21_224.yaml"),
    ("CLIPtrase (ViT-L/14 CLIP)", "configs/cliptrase/voc21_336.yaml"),
)
WEIGHTS_NAME = "model_final.pth"  # what train_net.py writes at the end of training, in OUTPUT_DIR


@dataclass(frozen=True)
class Method:
    """One entry of the page's method list: ``weights`` is "" for a training-free method."""

    name: str
    config: str
    weights: str = ""


def parse_method(spec: str) -> Method:
    """``NAME=CONFIG`` or ``NAME=CONFIG@WEIGHTS`` (the ``--method`` flag) -> a :class:`Method`; both files
    must exist."""
    name, sep, rest = spec.partition("=")
    config, _, weights = rest.partition("@")
    if not sep or not name.strip() or not config:
        raise ValueError(f"--method '{spec}': expected NAME=CONFIG or NAME=CONFIG@WEIGHTS, e.g. "
                         "'LDVC=configs/demo.yaml@output/demo/model_final.pth'.")
    for what, path in (("config", config), ("weights", weights)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"--method '{spec}': {what} file '{path}' does not exist.")
    return Method(name.strip(), config, weights)


def clip_weights_available(model_name: str, pretrained: str, cache_dir: str = "") -> bool:
    """Whether CLIP weights can be had without a download: the shipped shapes CLIP, a local file, or an
    open_clip tag whose file is in the Hugging Face cache. ``""`` (random weights) counts as unavailable:
    a training-free method on random weights segments nothing."""
    if not pretrained:
        return False
    if pretrained == "shapes" or os.path.isfile(pretrained):
        return True
    try:
        import open_clip
        from huggingface_hub import try_to_load_from_cache

        hub = open_clip.get_pretrained_cfg(model_name, pretrained).get("hf_hub", "")
    except Exception:  # an unknown model or tag
        return False
    repo_id = "/".join(hub.rstrip("/").split("/")[:2])
    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return bool(repo_id) and any(
        isinstance(try_to_load_from_cache(repo_id, n, cache_dir=cache_dir or None), str) for n in names)


def default_methods(configs: Sequence[Tuple[str, str]] = DEFAULT_CONFIGS) -> List[Method]:
    """The methods that can run here: training-free configs whose CLIP weights are available, and trained
    configs whose ``<OUTPUT_DIR>/model_final.pth`` exists (e.g. after ``make demo``)."""
    methods = []
    for name, config in configs:
        if not os.path.isfile(config):
            continue
        try:
            cfg = load_config(config, ["MODEL.DEVICE", "cpu"])  # only read here
        except Exception as e:  # a config this installation cannot read (e.g. an optional extra missing)
            logger.info(f"Not offering '{name}': {config} does not load ({e}).")
            continue
        if training_free(cfg):
            if clip_weights_available(cfg.MODEL.CLIP.MODEL, cfg.MODEL.CLIP.PRETRAINED, cfg.MODEL.CLIP.CACHE_DIR):
                methods.append(Method(name, config, ""))
        else:
            weights = os.path.join(cfg.OUTPUT_DIR, WEIGHTS_NAME)
            if os.path.isfile(weights):
                methods.append(Method(name, config, weights))
    return methods


class ModelCache:
    """Predictors built once and kept, keyed by (config, weights, device). Each keeps the text embeddings
    of at most ``max_vocabularies`` class lists (the model caches one per list; a new list past the limit
    clears that cache first)."""

    def __init__(self, device: str = "cpu", max_vocabularies: int = 32):
        self.device = device
        self.max_vocabularies = max_vocabularies
        self._models: Dict[Tuple[str, str, str], OpenVocabPredictor] = {}
        self._vocabularies: Dict[Tuple[str, str, str], set] = {}
        self._lock = threading.Lock()

    def key(self, method: Method) -> Tuple[str, str, str]:
        return (os.path.abspath(method.config), os.path.abspath(method.weights) if method.weights else "",
                self.device)

    def cached(self, method: Method) -> bool:
        return self.key(method) in self._models

    def get(self, method: Method) -> OpenVocabPredictor:
        """The predictor of ``method``, built (config loaded, weights loaded) on first use."""
        key = self.key(method)
        with self._lock:
            if key not in self._models:
                opts = ["MODEL.WEIGHTS", method.weights, "MODEL.DEVICE", self.device]
                self._models[key] = OpenVocabPredictor(load_config(method.config, opts), input_format="RGB")
                self._vocabularies[key] = set()
            return self._models[key]

    def make_room(self, method: Method, names: Sequence[str]) -> None:
        """Call before ``method`` embeds ``names``: a new class list that would exceed the limit first clears
        the model's cached embeddings (all of them: the model's cache has no order)."""
        key, vocabulary = self.key(method), tuple(names)
        seen = self._vocabularies.setdefault(key, set())
        if vocabulary not in seen and len(seen) >= self.max_vocabularies:
            clear = getattr(self._models[key].model, "clear_text_cache", None)
            if clear is not None:
                clear()
            seen.clear()
        seen.add(vocabulary)

    def built(self) -> List[Tuple[str, str, str]]:
        """The keys of the models built so far."""
        return list(self._models)
