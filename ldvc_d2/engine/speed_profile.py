"""Where a training step's time goes, from torch.profiler ``record_function`` ranges.

The step's components are wrapped for the duration of the profile (instance attributes, removed
afterwards): ``text_encoder`` (the segmentor's ``encode_text``: prompted text encoder, or the fixed
embeddings' lookup), ``vit_forward`` (the backbone), ``head`` (the decoder head), ``loss`` (the
focal + dice criterion at label resolution; the logits' upsampling is in ``other_forward``), and
``backward``. The backward pass is split by a second profile in which the backbone's outputs are
detached: its backward is that of the head, loss and text encoder only, the difference that of the
prompted ViT. ``data_loading_per_image`` times the training mapper (read, scale, crop, flip, photometric
distortion) on a 640×480 JPEG / PNG pair, COCO's usual size.
"""
import os
import tempfile
from contextlib import contextmanager
from typing import Callable, Dict, Iterator

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile, record_function

from ..data.mapper import LDVCTrainMapper
from ..modeling import decoder_segmentor
from ..utils.speed import median_seconds, synchronize

__all__ = ["mapper_seconds", "train_breakdown"]

COMPONENTS = ("text_encoder", "vit_forward", "head", "loss", "backward")


def _labelled(fn: Callable, label: str) -> Callable:
    def wrapped(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapped


def _detached(fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        return {k: [t.detach() for t in v] if isinstance(v, list) else v.detach() if torch.is_tensor(v) else v
                for k, v in out.items()}
    return wrapped


@contextmanager
def _instrumented(model: torch.nn.Module, detach_backbone: bool) -> Iterator[None]:
    loss_fn = decoder_segmentor.focal_dice_loss
    backbone_forward = model.backbone.forward
    model.encode_text = _labelled(model.encode_text, "text_encoder")
    model.backbone.forward = _labelled(_detached(backbone_forward) if detach_backbone else backbone_forward,
                                       "vit_forward")
    model.sem_seg_head.forward = _labelled(model.sem_seg_head.forward, "head")
    model.losses = _labelled(model.losses, "forward")
    decoder_segmentor.focal_dice_loss = _labelled(loss_fn, "loss")
    try:
        yield
    finally:
        for module, attr in ((model, "encode_text"), (model.backbone, "forward"), (model.sem_seg_head, "forward"),
                             (model, "losses")):
            delattr(module, attr)
        decoder_segmentor.focal_dice_loss = loss_fn


def _profiled_seconds(model, step: Callable[[], None], device: torch.device, repeats: int,
                      detach_backbone: bool) -> Dict[str, float]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _instrumented(model, detach_backbone):
        synchronize(device)  # the caller has run the step before (warm)
        with profile(activities=activities) as prof:
            for _ in range(repeats):
                step()
            synchronize(device)
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    return {k: totals.get(k, 0.0) / 1e6 / repeats for k in ("forward", "backward", *COMPONENTS)}


def train_breakdown(model: torch.nn.Module, step: Callable[[], None], device: torch.device,
                    repeats: int) -> Dict[str, float]:
    """Seconds per training step and component. ``step`` runs ``model(batch)``, sums the losses and
    calls ``backward()``; the backward call is labelled by wrapping ``torch.Tensor.backward``."""
    original = torch.Tensor.backward
    torch.Tensor.backward = _labelled(original, "backward")
    try:
        full = _profiled_seconds(model, step, device, repeats, detach_backbone=False)
        rest = _profiled_seconds(model, step, device, repeats, detach_backbone=True)
    finally:
        torch.Tensor.backward = original
    named = full["text_encoder"] + full["vit_forward"] + full["head"] + full["loss"]
    return {"text_encoder": full["text_encoder"], "vit_forward": full["vit_forward"], "head": full["head"],
            "loss": full["loss"], "other_forward": max(full["forward"] - named, 0.0),
            "vit_backward": max(full["backward"] - rest["backward"], 0.0),
            "head_loss_text_backward": rest["backward"]}


def mapper_seconds(cfg, repeats: int) -> float:
    """Seconds for the training mapper to produce one image of a 640×480 COCO-like JPEG / label PNG."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        image, label = os.path.join(tmp, "image.jpg"), os.path.join(tmp, "label.png")
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image, quality=90)
        Image.fromarray(rng.integers(0, 171, (480, 640), dtype=np.uint8)).save(label)
        mapper = LDVCTrainMapper(cfg, True)
        item = {"file_name": image, "sem_seg_file_name": label}
        return median_seconds(lambda: mapper(item), torch.device("cpu"), repeats)
