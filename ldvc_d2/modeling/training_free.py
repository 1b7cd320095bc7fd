"""The segmentor the training-free CLIP methods share: a frozen CLIP whose last block a method rewrites, patch-text
cosines per window, and the harness post-processing of SCLIP / NACLIP / ClearCLIP / ProxyCLIP (MODEL.TRAINING_FREE).

Per window (all four released harnesses, ``forward_feature`` / ``forward_slide``): patch tokens of the modified
tower (CLS dropped, ``ln_post``, ``proj``, L2-normalised) against the template-ensemble query embeddings,
logits = LOGIT_SCALE · cos on the h×w grid, bilinearly resized to the window (align_corners=False); windows are
averaged and resized to the original image by :class:`ZeroShotSegmentor`, then optionally refined by PAMR.
:meth:`TrainingFreeCLIPSegmentor.postprocess` is the harnesses' ``postprocess_result``:

    P_q = softmax_q(logits)                           over every query word (synonyms, background words)
    P_c = max_{q ∈ c} P_q                             a class takes its best word
    SCLIP area threshold: P_c ← 0 for foreground classes c with #{argmax = c} <= AREA_THRESHOLD · #{argmax ∈ fg}
    pred = argmax_c P_c;  pred ← background class where max_c P_c < PROB_THRESHOLD

Scores returned are P_c, with the background class set to 1 where the threshold fires, so that the evaluator's
argmax is the harness's prediction. The background class is the dataset's ``background_class`` (index 0 in VOC21,
80 in our COCO-Object), not index 0 as in the harnesses' own label maps.
"""
import os
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog

from .clip import PromptedVisionEncoder, TemplateEnsembleTextEncoder, build_clip_model
from .clip.surgery import BlockHook
from .segmentor import ZeroShotSegmentor
from .segmentor_config import segmentor_config

__all__ = ["QueryEmbeddings", "TrainingFreeCLIPSegmentor", "read_name_set", "training_free_args"]


class QueryEmbeddings(NamedTuple):
    """``weights`` Q×d query-word embeddings; ``query_class`` Q class index of each word; C classes; background
    class index (−1: none)."""

    weights: torch.Tensor
    query_class: torch.Tensor
    num_classes: int
    background: int


def read_name_set(path: str) -> List[List[str]]:
    """A name-set file: one line per class, synonyms separated by ","; blank lines and "#" lines skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.TRAINING_FREE.NAME_SET: no file '{path}'. Give a text file with one line "
                                "per class of the test set, synonyms separated by ', '.")
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    return [[w.strip() for w in ln.split(",") if w.strip()] for ln in lines]


def training_free_args(cfg) -> Dict[str, object]:
    """The :class:`TrainingFreeCLIPSegmentor` arguments of a config (rooms add their own)."""
    t, c = cfg.MODEL.TRAINING_FREE, cfg.MODEL.CLIP
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    words = list(t.BACKGROUND_WORDS) or (list(meta.get("background_names", [])) if meta is not None else [])
    return {
        **segmentor_config(cfg, trains=False),
        "clip_model": c.MODEL, "clip_pretrained": c.PRETRAINED, "clip_cache_dir": c.CACHE_DIR,
        "templates": list(c.TEXT_TEMPLATES) or [c.TEXT_TEMPLATE], "pos_interpolation": c.POS_INTERPOLATION,
        "logit_scale": t.LOGIT_SCALE, "prob_threshold": t.PROB_THRESHOLD, "area_threshold": t.AREA_THRESHOLD,
        "background_class": meta.get("background_class", None) if meta is not None else None,
        "background_words": words, "name_set": read_name_set(t.NAME_SET) if t.NAME_SET else None,
    }


class TrainingFreeCLIPSegmentor(ZeroShotSegmentor):
    """Base of the training-free rooms. A room implements :meth:`hooks` (the last block's rewrite for an h×w
    patch grid) or overrides :meth:`dense_features`."""

    TRAINING_FREE = True

    def __init__(self, *, clip_model: str, clip_pretrained: str, clip_cache_dir: str = "", templates=("imagenet80",),
                 pos_interpolation: str = "bicubic", logit_scale: float = 40.0, prob_threshold: float = 0.0,
                 area_threshold: float = 0.0, background_class: Optional[int] = None,
                 background_words: Sequence[str] = (), name_set: Optional[List[List[str]]] = None,
                 pad_multiple: int = 0, **kwargs):
        model, tokenizer = build_clip_model(clip_model, clip_pretrained, cache_dir=clip_cache_dir or None)
        visual = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[],
                                       pos_interpolation=pos_interpolation)
        super().__init__(pad_multiple=pad_multiple or visual.patch_size, **kwargs)
        self.visual = visual
        self.text = TemplateEnsembleTextEncoder(model, tokenizer, templates=list(templates))
        self.logit_scale = float(logit_scale) or float(model.logit_scale.detach().exp())
        self.prob_threshold, self.area_threshold = float(prob_threshold), float(area_threshold)
        self.background_class = background_class
        self.background_words = list(background_words)
        self.name_set = name_set
        if self.prob_threshold > 0 and background_class is None:
            raise ValueError("MODEL.TRAINING_FREE.PROB_THRESHOLD > 0 writes the test set's background class, but "
                             "DATASETS.TEST[0] has no background_class metadata; set PROB_THRESHOLD 0 for it.")
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    # ---- what a room implements ----------------------------------------------------------------
    def hooks(self, h: int, w: int) -> List[BlockHook]:
        """Block hooks for an h×w patch grid (default: none, plain CLIP)."""
        return []

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W windows -> B×d×h×w L2-normalised patch features of the modified tower."""
        h, w = images.shape[-2] // self.visual.patch_size, images.shape[-1] // self.visual.patch_size
        return self.visual(images, hooks=self.hooks(h, w))["dense"]

    # ---- shared ------------------------------------------------------------------------------------
    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        raise RuntimeError(f"{type(self).__name__} is training-free: it has nothing to train. Evaluate it with "
                           "train_net.py --eval-only (no MODEL.WEIGHTS needed).")

    def encode_text(self, class_names: List[str]) -> QueryEmbeddings:
        """Queries: each class's name-set words (or its name); the background class's background words."""
        if self.name_set is not None and len(self.name_set) != len(class_names):
            raise ValueError(f"MODEL.TRAINING_FREE.NAME_SET has {len(self.name_set)} lines but the test set has "
                             f"{len(class_names)} classes; give one line per class.")
        queries: List[str] = []
        owner: List[int] = []
        bg = self.background_class if self.background_class is not None and self.background_class < len(class_names) else -1
        for c, name in enumerate(class_names):
            words = self.name_set[c] if self.name_set is not None else [name]
            if c == bg and self.background_words:
                words = self.background_words
            queries += words
            owner += [c] * len(words)
        return QueryEmbeddings(self.text(queries), torch.tensor(owner, device=self.device), len(class_names), bg)

    def batch_window_scores(self, images: torch.Tensor, text: QueryEmbeddings) -> torch.Tensor:
        """B×3×H×W windows -> B×Q×H×W logits LOGIT_SCALE · cos(patch, query), bilinear from the patch grid."""
        dense = self.dense_features(images)
        logits = self.logit_scale * torch.einsum("bdhw,qd->bqhw", dense, text.weights.to(dense.dtype))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def postprocess(self, scores: torch.Tensor, text: QueryEmbeddings, inputs: Dict) -> torch.Tensor:
        """Q×H×W logits -> C×H×W class probabilities whose argmax is the harness's prediction (module docstring)."""
        probs = scores.softmax(dim=0)
        index = text.query_class.to(probs.device)[:, None, None].expand_as(probs)
        out = probs.new_zeros(text.num_classes, *probs.shape[1:]).scatter_reduce(0, index, probs, "amax",
                                                                                include_self=False)
        if self.area_threshold > 0:
            fg = [c for c in range(text.num_classes) if c != text.background]
            counts = torch.bincount(out.argmax(dim=0).flatten(), minlength=text.num_classes).float()
            keep = counts[fg] > self.area_threshold * counts[fg].sum()
            out[fg] = out[fg] * keep[:, None, None].to(out.dtype)
        if self.prob_threshold > 0 and text.background >= 0:
            low = out.amax(dim=0) < self.prob_threshold
            out[text.background][low] = 1.0
        return out

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        t = cfg.MODEL.TRAINING_FREE
        return (f"{super().describe_protocol(cfg)}, training-free ({cfg.MODEL.CLIP.MODEL} '{cfg.MODEL.CLIP.PRETRAINED}'), "
                f"logit scale {t.LOGIT_SCALE}, probability threshold {t.PROB_THRESHOLD}, area threshold "
                f"{t.AREA_THRESHOLD}, positional resize {cfg.MODEL.CLIP.POS_INTERPOLATION}")
