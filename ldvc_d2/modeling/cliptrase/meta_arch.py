"""The CLIPtrase meta-architecture: training-free open-vocabulary segmentation (seed 001, SEED_SYSTEMS §2).

One window of an image, with any open_clip ViT and any vocabulary:

* T1/T2 — the frozen CLIP image tower runs with two hooks (:func:`cliptrase_hooks`): the self-correlation
  R of block ``CORRELATION_LAYER`` is read from its q/k/v, and block ``ATTENTION_LAYER`` runs with the
  sum of the ``ATTENTION_BRANCHES`` self-attentions (["q","k"] = SCLIP's CSA, [] = plain CLIP).
* T4/T5/T5' — patch logits ``e^{logit_scale} f̂_p·t_c`` against template-ensemble class embeddings
  (``TEMPLATES``), resized to the window; optionally re-weighted by the [CLS]-text similarity.
* T6-T10 — W = max(0, R − R_[CLS]), DBSCAN on its rows (ε, m; ``DBSCAN_SCALE`` "grid" scales them with
  the number of patches), smoothed region maps, a hard (official script) or soft (official D2 code) vote
  inside each region; with ``CLUSTER`` False the per-pixel argmax (the "CLIP" and "SCLIP" rows).

Background (T4/T10): a vocabulary entry named ``BACKGROUND_CLASS`` stands for a list of background words
(``BACKGROUND_WORDS``, or the test dataset's ``background_names`` metadata); its row is the first word's
embedding and the other words are appended after the C classes. A pixel whose best word is a background
word is background, before and after the vote.

Scores (what the evaluator, the demo's ``--threshold`` and sliding-window averaging see), C×H×W:
per-pixel softmax probabilities over the classes and background words (soft vote: of the region-mean
logits), the background class taking the highest of its words' probabilities, so that the arg-max is
exactly the official prediction; with the hard vote, the fraction of the region's pixels voting for each
class (its arg-max is the region's majority, ties to the smallest index as the official code).
"""
import logging
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip import PromptedVisionEncoder, TemplateEnsembleTextEncoder, build_clip_model
from ..segmentor import ZeroShotSegmentor
from ..segmentor_config import segmentor_config
from ..clip.clustering import dbscan_parameters
from .correlation import check_branches, cliptrase_hooks, denoise_correlation, patch_logits
from .regions import refine_with_regions

__all__ = ["CLIPtrase", "ClassEmbeddings"]

logger = logging.getLogger(__name__)


class ClassEmbeddings(NamedTuple):
    """Text side of one vocabulary: ``weights`` C'×d (the C classes, then the extra background words),
    ``num_classes`` C, ``background`` index of the background class in the vocabulary (−1: none)."""

    weights: torch.Tensor
    num_classes: int
    background: int


@META_ARCH_REGISTRY.register()
class CLIPtrase(ZeroShotSegmentor):
    """Training-free: ``losses`` raises; built with no MODEL.WEIGHTS (nothing of it is trained)."""

    TRAINING_FREE = True

    @configurable
    def __init__(
        self,
        *,
        clip_model: str,
        clip_pretrained: str,
        clip_cache_dir: str = "",
        templates="imagenet80",
        correlation_layer: int = -2,
        attention_layer: int = -1,
        attention_branches: Sequence[str] = ("q", "k", "v"),
        cluster: bool = True,
        dbscan_eps: float = 0.7,
        dbscan_min_samples: int = 3,
        dbscan_scale: str = "fixed",
        smooth_ratio: int = 4,
        median_size: int = 7,
        vote: str = "hard",
        image_level_reweight: bool = False,
        background_class: str = "background",
        background_words: Sequence[str] = (),
        pos_interpolation: str = "bicubic",
        **kwargs,
    ):
        """
        Args:
            clip_model / clip_pretrained / clip_cache_dir: any open_clip ViT (:func:`build_clip_model`).
            others: MODEL.CLIPTRASE.* (ldvc_d2/config.py), the supplement's and official code's values.
            kwargs: :class:`ZeroShotSegmentor`'s.
        """
        model, tokenizer = build_clip_model(clip_model, clip_pretrained, cache_dir=clip_cache_dir or None)
        visual = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[],
                                       pos_interpolation=pos_interpolation)
        super().__init__(pad_multiple=visual.patch_size, **kwargs)
        if vote not in ("hard", "soft"):
            raise ValueError(f"MODEL.CLIPTRASE.VOTE must be 'hard' or 'soft', got '{vote}'.")
        dbscan_parameters(dbscan_eps, dbscan_min_samples, 196, dbscan_scale)  # checks the rule's name
        self.visual = visual
        self.text = TemplateEnsembleTextEncoder(model, tokenizer, templates=templates)
        self.logit_scale = float(model.logit_scale.detach().exp())
        # [] = CLIP's own last block (the "CLIP" row); the correlation tap only when clustering uses it
        branches = tuple(attention_branches) and check_branches(attention_branches, "MODEL.CLIPTRASE.ATTENTION_BRANCHES")
        hooks = cliptrase_hooks(correlation_layer, attention_layer, attention_branches=branches or ("q", "k", "v"))
        self.hooks = [h for h in hooks if (h.attn_fn is None and cluster) or (h.attn_fn is not None and branches)]
        self.cluster, self.vote = cluster, vote
        self.dbscan = (dbscan_eps, dbscan_min_samples, dbscan_scale)
        self.smooth_ratio, self.median_size = smooth_ratio, median_size
        self.image_level_reweight = image_level_reweight
        self.background_class = background_class
        self.background_words = list(background_words)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        c, t = cfg.MODEL.CLIPTRASE, cfg.MODEL.CLIP
        words = list(c.BACKGROUND_WORDS)
        if not words and cfg.DATASETS.TEST:
            words = list(MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("background_names", []))
        args = segmentor_config(cfg, trains=False)
        args.update({
            "clip_model": t.MODEL, "clip_pretrained": t.PRETRAINED, "clip_cache_dir": t.CACHE_DIR,
            "templates": _templates(cfg), "correlation_layer": c.CORRELATION_LAYER, "attention_layer": c.ATTENTION_LAYER,
            "attention_branches": list(c.ATTENTION_BRANCHES), "cluster": c.CLUSTER, "dbscan_eps": c.DBSCAN_EPS,
            "dbscan_min_samples": c.DBSCAN_MIN_SAMPLES, "dbscan_scale": c.DBSCAN_SCALE,
            "smooth_ratio": c.SMOOTH_RATIO, "median_size": c.MEDIAN_SIZE, "vote": c.VOTE,
            "image_level_reweight": c.IMAGE_LEVEL_REWEIGHT, "background_class": c.BACKGROUND_CLASS,
            "background_words": words, "pos_interpolation": t.POS_INTERPOLATION,
        })
        return args

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        c = cfg.MODEL.CLIPTRASE
        branches = "+".join(c.ATTENTION_BRANCHES) or "none (plain CLIP)"
        region = (f"DBSCAN eps {c.DBSCAN_EPS} min_samples {c.DBSCAN_MIN_SAMPLES} ({c.DBSCAN_SCALE}), {c.VOTE} vote"
                  if c.CLUSTER else "per-pixel argmax (no clustering)")
        templates = "+".join(t if "{}" not in t else repr(t) for t in _templates(cfg))
        return (f"{super().describe_protocol(cfg)}, training-free ({cfg.MODEL.CLIP.MODEL} "
                f"'{cfg.MODEL.CLIP.PRETRAINED}'), self-correlation attention {branches}, {region}, "
                f"text templates {templates}, positional resize {cfg.MODEL.CLIP.POS_INTERPOLATION}"
                + (", image-level re-weighting" if c.IMAGE_LEVEL_REWEIGHT else ""))

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        raise RuntimeError("CLIPtrase is training-free: it has nothing to train. Evaluate it with "
                           "train_net.py --eval-only (no MODEL.WEIGHTS needed).")

    def encode_text(self, class_names: List[str]) -> ClassEmbeddings:
        names = list(class_names)
        keys = [n.strip().lower() for n in names]
        background = keys.index(self.background_class.lower()) if self.background_class.lower() in keys else -1
        extra: List[str] = []
        if background >= 0 and self.background_words:
            names[background] = self.background_words[0]
            extra = self.background_words[1:]
        return ClassEmbeddings(self.text(names + extra), len(class_names), background)

    def window_scores(self, images: torch.Tensor, text: ClassEmbeddings) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        out = self.visual(images, hooks=self.hooks)
        dense = out["dense"][0]
        logits = patch_logits(dense, text.weights, self.logit_scale, size,
                              global_feat=out["global"][0] if self.image_level_reweight else None)
        if not self.cluster:
            return self._collapse_probs(logits.softmax(dim=0), text)
        grid = (int(dense.shape[-2]), int(dense.shape[-1]))  # ints also while fvcore traces
        weights = denoise_correlation(out["correlation"][0])
        eps, min_samples = dbscan_parameters(*self.dbscan[:2], grid[0] * grid[1], self.dbscan[2])
        vote = refine_with_regions(logits, weights, grid, eps=eps, min_samples=min_samples, vote=self.vote,
                                   ratio=self.smooth_ratio, median_size=self.median_size)
        if vote.regions is None or self.vote == "soft":  # K = 0: the pixel argmax (T8); soft: region means
            return self._collapse_probs(vote.logits.softmax(dim=0), text)
        return self._vote_fractions(self._pixel_labels(logits, text), vote.regions, text.num_classes)

    @torch.no_grad()
    def stage_maps(self, image: torch.Tensor, class_names: List[str]) -> List[Tuple[str, torch.Tensor]]:
        """What the regions change, for ``tools/visualize_attention.py``: one whole-image pass of a
        3×H×W input-format image -> [("patch-text probabilities (T5)", C×H×W), ("after the region vote
        (T6-T10)", C×H×W)]; without clustering only the first."""
        h, w = image.shape[-2:]
        images, text = self.preprocess(image), self.text_features(list(class_names))
        out = self.visual(images, hooks=self.hooks)
        logits = patch_logits(out["dense"][0], text.weights, self.logit_scale, tuple(images.shape[-2:]),
                              global_feat=out["global"][0] if self.image_level_reweight else None)
        maps = [("patch-text probabilities (T5)", self._collapse_probs(logits.softmax(dim=0), text)[:, :h, :w])]
        if self.cluster:
            maps.append((f"after the {self.vote} region vote (T6-T10)", self.window_scores(images, text)[:, :h, :w]))
        return maps

    @staticmethod
    def _collapse_probs(probs: torch.Tensor, text: ClassEmbeddings) -> torch.Tensor:
        """C'×H×W probabilities -> C×H×W: the background class takes the max over its words (T10)."""
        c = text.num_classes
        out = probs[:c].clone()
        if text.background >= 0 and probs.shape[0] > c:
            out[text.background] = torch.maximum(out[text.background], probs[c:].amax(dim=0))
        return out

    @staticmethod
    def _pixel_labels(logits: torch.Tensor, text: ClassEmbeddings) -> torch.Tensor:
        """Per-pixel class (T5 argmax) with background words folded into the background class (T10)."""
        pred = logits.argmax(dim=0)
        if text.background >= 0:
            pred[pred >= text.num_classes] = text.background
        return pred

    @staticmethod
    def _vote_fractions(pixel_labels: torch.Tensor, regions: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(T9, hard) C×H×W: per region, the fraction of its pixels whose own class is c."""
        num_regions = int(regions.max()) + 1
        flat = (regions * num_classes + pixel_labels).flatten()
        counts = torch.bincount(flat, minlength=num_regions * num_classes).reshape(num_regions, num_classes)
        fractions = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
        return fractions[regions].permute(2, 0, 1)


def _templates(cfg) -> List[str]:
    """MODEL.CLIP.TEXT_TEMPLATES, or MODEL.CLIP.TEXT_TEMPLATE alone when that list is empty."""
    return list(cfg.MODEL.CLIP.TEXT_TEMPLATES) or [cfg.MODEL.CLIP.TEXT_TEMPLATE]
