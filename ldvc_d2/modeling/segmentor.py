"""The zero-shot segmentor every method of the plugin is built on: class names in, ``sem_seg`` out.

What LDVC, the ZegCLIP baseline, CLIPtrase (and later DeOP and C2S) share lives here, so that a
method only says how it scores one window (:meth:`ZeroShotSegmentor.window_scores`), how it embeds
class names (:meth:`ZeroShotSegmentor.encode_text`) and, if it trains, its losses
(:meth:`ZeroShotSegmentor.losses`):

* **Class lists** (LDVC §4.1, DESIGN §1.5; read from a config by :mod:`.segmentor_config`): the
  training classes come from the training dataset's metadata, its *seen* classes (inductive) or all
  of them (MODEL.SEGMENTOR.TRAINING_CLASSES "all": transductive / fully supervised). Labels arrive over all
  classes of the benchmark and are mapped to indices of the training class list, so an unseen pixel
  becomes ``ignore_label`` (the seen-only view is derived here, never stored on disk).
* **Inference** (DESIGN §1.4): the classes are those of the input (``"class_names"`` in each input
  dict, set by the test data loader or given by the user for an open vocabulary), else the model's
  default test classes (the first test dataset's). Scores are averaged over sliding windows (mmseg's
  grid, :mod:`.windows`) or come from one whole-image pass, optionally calibrated by subtracting
  ``calibration`` from the scores of the seen classes (ZegCLIP's calibration, inductive models only), and
  are resized to the original image size, as Detectron2's semantic segmentors return them.
* **Batched windows**: consecutive windows of the same size and vocabulary (all windows of an
  image, and those of the next images of a batch) go through one forward pass, up to ``window_batch``
  (MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH), for methods that score a batch
  (:meth:`ZeroShotSegmentor.batch_window_scores`); windows, their order and the order of the sums are
  those of one-by-one scoring. ``precision`` (MODEL.SEGMENTOR.INFERENCE.PRECISION) runs these passes under
  ``torch.autocast``; scores are averaged, calibrated and returned in fp32.
* **Refinement and post-processing**: optionally PAMR (MODEL.SEGMENTOR.INFERENCE.PAMR_STEPS, :mod:`.pamr`) on the
  scores at the output size, guided by the input image resized to it; then :meth:`ZeroShotSegmentor.postprocess`
  (the identity, except for the training-free harness methods of :mod:`.training_free`).
* **Text cache**: class embeddings do not depend on the image; in eval mode they are cached per class
  list and device.
* **Protocol line**: :meth:`ZeroShotSegmentor.describe_protocol` says, from a config, how a method
  makes its test predictions; the evaluator logs it and writes it next to the metrics.

The keys every method shares are ``MODEL.SEGMENTOR.*`` (:mod:`.segmentor_config`) and the CLIP tower's
``MODEL.CLIP.*`` (:mod:`.clip.config`).
"""
import math
from collections import Counter
from typing import Dict, Hashable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.precision import PRECISION_DTYPES, autocast
from .pamr import PAMR
from .windows import Box, consecutive_chunks, slide_boxes

__all__ = ["ZeroShotSegmentor", "inference_model"]


class ZeroShotSegmentor(nn.Module):
    """Base of every meta-architecture of the plugin (not registered itself).

    Subclasses implement :meth:`encode_text` (C×d class embeddings), :meth:`window_scores` (scores of
    one padded window) and, if they train, :meth:`losses`; they set ``pad_multiple`` (inputs are padded
    on the bottom/right to multiples of it) before the first forward.
    """

    def __init__(
        self,
        *,
        train_class_names: Optional[List[str]],
        train_class_ids: Optional[List[int]],
        test_class_names: Optional[List[str]] = None,
        test_seen_classes: Sequence[int] = (),
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_label: int = 255,
        calibration: float = 0.0,
        inference_mode: str = "slide",
        crop_size: int = 512,
        stride: int = 426,
        pad_multiple: int = 1,
        train_size: Sequence[int] = (0, 0),
        window_batch: int = 8,
        precision: str = "fp32",
        pamr_steps: int = 0,
        pamr_dilations: Sequence[int] = (8, 16),
    ):
        """
        Args:
            train_class_names / train_class_ids: training classes and their indices in the label maps
                (None for training-free methods).
            test_class_names / test_seen_classes: default inference vocabulary and which of it is seen.
            calibration: subtracted from seen-class scores at inference (0 disables).
            inference_mode / crop_size / stride: "slide" (windows of ``crop_size`` every ``stride``
                pixels) or "whole" (one pass over the padded image).
            pad_multiple: inputs are padded to multiples of this (patch size × what the head needs).
            train_size: training crops are padded to at least this (H, W), as mmseg pads every crop
                to the crop size: a per-image loss mean then does not depend on the batch.
            window_batch: most windows scored in one forward pass (0 or 1: one by one).
            precision: "fp32", "bf16" or "fp16": autocast dtype of the window passes.
            pamr_steps / pamr_dilations: PAMR refinement of the scores at the output size (0 steps: off;
                :mod:`.pamr`), before :meth:`postprocess`.
        """
        super().__init__()
        if inference_mode not in ("slide", "whole"):
            raise ValueError(f"MODEL.SEGMENTOR.INFERENCE.MODE must be 'slide' or 'whole', got '{inference_mode}'.")
        self.train_class_names = train_class_names
        self.test_class_names = test_class_names
        self.test_seen_classes = list(test_seen_classes)
        self.ignore_label = ignore_label
        self.calibration = calibration
        if precision not in PRECISION_DTYPES:
            raise ValueError(f"MODEL.SEGMENTOR.INFERENCE.PRECISION must be one of {list(PRECISION_DTYPES)}, "
                             f"got '{precision}'.")
        self.inference_mode = inference_mode
        self.window_batch = max(int(window_batch), 1)
        self.precision = precision
        self.crop_size = crop_size
        self.stride = stride
        self.pad_multiple = pad_multiple
        self.train_size = tuple(train_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # label value -> training-class index; 16-bit labels (more than 255 classes, ignore 65535) need more rows
        size = max([256, ignore_label + 1] + [int(i) + 1 for i in train_class_ids or []])
        lut = torch.full((size,), ignore_label, dtype=torch.long)
        if train_class_ids is not None:
            lut[torch.tensor(train_class_ids, dtype=torch.long)] = torch.arange(len(train_class_ids))
        self.register_buffer("label_lut", lut, False)
        self.pamr = PAMR(pamr_steps, pamr_dilations) if pamr_steps > 0 else None
        self._text_cache: Dict[Tuple, torch.Tensor] = {}
        self._frozen_text_cache: Dict[Tuple, torch.Tensor] = {}  # training, text without trainable inputs

    # ---- what a method implements ------------------------------------------------------------
    def encode_text(self, class_names: List[str]) -> torch.Tensor:
        """C×d class embeddings of ``class_names`` (gradients flow in training)."""
        raise NotImplementedError

    def window_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Normalised 1×3×H×W window (H, W multiples of ``pad_multiple``) and C×d class embeddings
        -> C×H×W per-class scores at the window's resolution. A method implements this or
        :meth:`batch_window_scores`; by default it is the one window of a batch of one."""
        if type(self).batch_window_scores is ZeroShotSegmentor.batch_window_scores:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither window_scores nor batch_window_scores.")
        return self.batch_window_scores(images, text)[0]

    def batch_window_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """B×3×H×W windows -> B×C×H×W scores. By default one :meth:`window_scores` call per window (for a
        method whose window scoring is per image, e.g. CLIPtrase's DBSCAN regions); a method that scores a
        batch in one pass overrides this."""
        return torch.stack([self.window_scores(window[None], text) for window in images])

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement training.")

    def postprocess(self, scores: torch.Tensor, text, inputs: Dict) -> torch.Tensor:
        """Scores at the output size (C'×height×width, after PAMR) -> the C×height×width scores returned; the
        identity by default (training-free harness methods: softmax, synonyms, background threshold)."""
        return scores

    @classmethod
    def describe_protocol(cls, cfg) -> str:
        """One line saying how test predictions are made (logged and stored by the evaluator)."""
        inf = cfg.MODEL.SEGMENTOR.INFERENCE
        how = (f"sliding window {inf.CROP_SIZE}x{inf.CROP_SIZE} stride {inf.STRIDE}" if inf.MODE == "slide"
               else "whole image")
        precision = f", {inf.PRECISION} autocast" if inf.PRECISION != "fp32" else ""
        pamr = f", PAMR {inf.PAMR_STEPS} steps dilations {list(inf.PAMR_DILATIONS)}" if inf.PAMR_STEPS else ""
        return f"{cfg.MODEL.META_ARCHITECTURE}: {how}, short side {cfg.INPUT.MIN_SIZE_TEST}{precision}{pamr}"

    # ---- shared machinery --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        self.clear_text_cache()  # prompts change while training
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self.clear_text_cache()  # new prompts
        return super().load_state_dict(*args, **kwargs)

    def for_inference(self) -> "ZeroShotSegmentor":
        """The model as evaluated and exported: a method drops its training-only modules here (C2S: the
        latent decoder); the default keeps everything."""
        return self

    def clear_text_cache(self) -> None:
        """Forget the cached class embeddings (one entry per class list and device)."""
        self._text_cache.clear()
        self._frozen_text_cache.clear()

    def text_features(self, class_names: List[str]) -> torch.Tensor:
        """C×d class embeddings; cached per class list (and device) in eval mode, and in training where
        they do not depend on a trainable parameter (frozen text, e.g. ZegCLIP's template ensemble: encoding
        it every step was ~96% of a ZegCLIP training step, docs/speed.md). Under ``torch.no_grad`` in
        training nothing is cached: a detached result cannot tell whether it is frozen."""
        key = (tuple(class_names), self.device)
        if self.training:
            if key in self._frozen_text_cache:
                return self._frozen_text_cache[key]
            text = self.encode_text(class_names)
            if torch.is_grad_enabled() and not getattr(text, "requires_grad", True):
                self._frozen_text_cache[key] = text
            return text
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = self.encode_text(list(class_names))
        return self._text_cache[key]

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """One 3×H×W image (input format, 0-255) -> the normalised, padded 1×3×H'×W' tensor that one
        inference window feeds to the model (H', W' multiples of ``pad_multiple``)."""
        return self._pad(self._normalize(image), 0.0)[None]

    def forward(self, batched_inputs: List[Dict]) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        """Detectron2 format: dicts with ``image`` (3×H×W, RGB 0-255) and, in training, ``sem_seg``
        (H×W over all classes of the dataset); at inference optionally ``class_names``, ``seen_classes``
        and ``height``/``width`` (output size). Returns losses, or ``[{"sem_seg": C×height×width}]``."""
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def training_batch(self, batched_inputs: List[Dict]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(normalised B×3×H×W images, B×H×W targets as training-class indices or ``ignore_label``),
        every crop padded on the bottom/right to ``train_size`` (or the largest crop), rounded up to
        ``pad_multiple``."""
        if not self.train_class_names:
            raise ValueError(
                f"{type(self).__name__} has no training classes: DATASETS.TRAIN[0] must be a registered dataset "
                "with stuff_classes/seen_classes metadata."
            )
        h = max(max(x["image"].shape[-2] for x in batched_inputs), self.train_size[0])
        w = max(max(x["image"].shape[-1] for x in batched_inputs), self.train_size[1])
        size = self._padded_size(h, w)
        images = torch.stack([self._pad(self._normalize(x["image"]), 0.0, size) for x in batched_inputs])
        targets = torch.stack([self._pad(x["sem_seg"].to(self.device)[None], self.ignore_label, size)[0]
                               for x in batched_inputs])
        return images, self.label_lut[targets.long().clamp(0, self.label_lut.numel() - 1)]

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std

    def _padded_size(self, h: int, w: int) -> Tuple[int, int]:
        m = self.pad_multiple
        return math.ceil(h / m) * m, math.ceil(w / m) * m

    def _pad(self, t: torch.Tensor, value: float, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Pad C×H×W on the bottom/right to ``size``, by default the next multiples of ``pad_multiple``."""
        h, w = t.shape[-2:]
        size = size or self._padded_size(h, w)
        return F.pad(t, (0, size[1] - w, 0, size[0] - h), value=value)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """``[{"sem_seg": C×height×width}]`` for input dicts as :meth:`forward` takes them (eval mode)."""
        names = [self._class_names(x) for x in batched_inputs]
        texts = [self.text_features(list(n)) for n in names]
        images = [self._normalize(x["image"]) for x in batched_inputs]
        all_scores = self._averaged_scores(images, texts, [tuple(n) for n in names], self.inference_mode)
        outputs = []
        for inputs, class_names, text, scores in zip(batched_inputs, names, texts, all_scores):
            seen = inputs.get("seen_classes", self.test_seen_classes if class_names is self.test_class_names else [])
            if self.calibration and len(seen):
                scores[list(seen)] -= self.calibration
            height, width = inputs.get("height", scores.shape[-2]), inputs.get("width", scores.shape[-1])
            if (height, width) != tuple(scores.shape[-2:]):
                scores = F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            if self.pamr is not None:  # the guide image: the normalised input at the output size (SCLIP/NACLIP)
                guide = F.interpolate(self._normalize(inputs["image"])[None], size=(height, width), mode="bilinear",
                                      align_corners=False)
                scores = self.pamr(guide, scores[None])[0]
            outputs.append({"sem_seg": self.postprocess(scores, text, inputs)})
        return outputs

    def _class_names(self, inputs: Dict) -> Sequence[str]:
        names = inputs.get("class_names", self.test_class_names)
        if not names:
            raise ValueError(
                "No class names for inference: give 'class_names' in the input dict, or set "
                "DATASETS.TEST to a registered dataset with stuff_classes metadata."
            )
        return names

    def _averaged_scores(self, images: List[torch.Tensor], texts: List[torch.Tensor], vocabularies: List[Hashable],
                         mode: str) -> List[torch.Tensor]:
        """Normalised 3×H×W images, their class embeddings and a key per vocabulary -> per image C×H×W
        fp32 scores averaged over its windows ("slide") or of one window ("whole"). Windows are scored in
        order, up to ``window_batch`` consecutive ones of equal size and vocabulary per forward pass."""
        jobs: List[Tuple[int, Box]] = []
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            boxes = slide_boxes(h, w, self.crop_size, self.stride) if mode == "slide" else [(0, h, 0, w)]
            jobs += [(i, box) for box in boxes]
        totals: List[Optional[torch.Tensor]] = [None] * len(images)
        counts: List[Optional[torch.Tensor]] = [None] * len(images)

        def key(job: Tuple[int, Box]) -> Tuple:
            i, (y1, y2, x1, x2) = job
            return vocabularies[i], y2 - y1, x2 - x1

        windows = Counter(i for i, _ in jobs)  # windows per image
        for chunk in consecutive_chunks(jobs, key, self.window_batch):
            crops = torch.stack([self._pad(images[i][:, y1:y2, x1:x2], 0.0) for i, (y1, y2, x1, x2) in chunk])
            with autocast(self.device, PRECISION_DTYPES[self.precision]):
                scores = self.batch_window_scores(crops, texts[chunk[0][0]])
            for (i, (y1, y2, x1, x2)), s in zip(chunk, scores.float()):
                if windows[i] == 1:  # one window covers the image: its scores are the average
                    totals[i] = s[:, :y2 - y1, :x2 - x1]
                    continue
                if totals[i] is None:
                    totals[i] = s.new_zeros(s.shape[0], *images[i].shape[-2:])
                    counts[i] = s.new_zeros(1, *images[i].shape[-2:])
                totals[i][:, y1:y2, x1:x2] += s[:, :y2 - y1, :x2 - x1]
                counts[i][:, y1:y2, x1:x2] += 1
        return [total if count is None else total / count for total, count in zip(totals, counts)]


def inference_model(model: nn.Module) -> nn.Module:
    """The model as evaluated, exported and served: :meth:`ZeroShotSegmentor.for_inference` (C2S drops its
    training-only latent decoder and bank); a model without that method is returned as it is."""
    return model.for_inference() if hasattr(model, "for_inference") else model
