"""A tiny CLIP pretrained on the shapes world: the role real CLIP plays, at laptop scale.

Real CLIP weights cannot be downloaded everywhere, and without an image-text aligned CLIP a
zero-shot segmenter has nothing to transfer. This module trains the open_clip model ``LDVC-Tiny``
contrastively on image-caption pairs of the synthetic shapes world (:mod:`.world`):
64×64 images of one or two objects, captions such as "a striped red shape and a plain blue
shape". The captions cover *all* 16 classes, unseen ones included, as web captions cover CLIP's
concepts; LDVC's segmentation training later sees only the seen classes. Its quality is measured as zero-shot
classification accuracy of held-out single-object images against the 16 class names (chance 1/16).

``MODEL.CLIP.MODEL "LDVC-Tiny"`` with ``MODEL.CLIP.PRETRAINED "shapes"`` resolves to the
checkpoint cached under ``$DETECTRON2_DATASETS/shapes_zs_clip/`` (:mod:`.cache`), written atomically on
first use from the shipped checkpoint (below) or, for a recipe without one, pretrained here
(deterministic given the seed and thread count, a few minutes on 2 CPU cores). The file is a
plain open_clip checkpoint (``{"state_dict": ...}``), loadable with ``open_clip.create_model``.
``"shapes-quick"`` names a cheaper, opt-in recipe (``TINY_CLIP_RECIPES``), cached under its own name.

The package ships the default recipe's checkpoint (``assets/``; :mod:`.shipped`): on first use it is
written to the cache instead of pretraining, which keeps the quick start under 3 minutes.
``tools/pretrain_tiny_clip.py`` pretrains it afresh and compares.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout
from tqdm import tqdm

from ...utils.io import atomic_path
from ...utils.precision import PRECISION_DTYPES, autocast
from .world import CLASS_NAMES, GENERATOR_VERSION, SEEN_CLASSES, UNSEEN_CLASSES, make_caption, render_scene

__all__ = ["PretrainConfig", "TINY_CLIP_RECIPES", "encode_captions", "pretrain_tiny_clip", "zero_shot_accuracy",
           "TINY_CLIP_MODEL"]

logger = logging.getLogger(__name__)
TINY_CLIP_MODEL = "LDVC-Tiny"
TINY_CLIP_TAG = "shapes"
# ImageNet statistics in 0-1 units: the same normalisation LDVC's configs use (MODEL.PIXEL_MEAN/STD).
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Caption wrappers, as web captions vary; LDVC's default text-prompt template is among them, so its
# hand-crafted initialisation starts from a prompt this CLIP knows (as "a photo of a" for real CLIP).
CAPTION_TEMPLATES = ("{}", "a photo of {}", "this is a photo of {}.", "an image of {}", "there is {} in the scene.")
EVAL_TEMPLATE = "this is a photo of a {}."


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    image_size: int = 64
    two_object_prob: float = 0.5  # share of two-object images (compositional captions)
    patch_dropout: float = 0.0  # share of patch tokens dropped per training image (FLIP); 0 = none
    precision: str = "fp32"  # "bf16": forward under bfloat16 autocast (_train_precision)

    def __post_init__(self):
        if self.precision not in _PRECISIONS:
            raise ValueError(f"PretrainConfig.precision must be one of {_PRECISIONS}, got {self.precision!r}.")

    def digest(self) -> str:
        """Names the cached checkpoint: changes with the settings and with the world's drawing code.
        Fields added later are left out at their earlier behaviour, so older checkpoints keep their names."""
        key = {**dataclasses.asdict(self), "world": GENERATOR_VERSION}
        for name, before in _LATER_FIELDS.items():
            if key[name] == before:
                del key[name]
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


_LATER_FIELDS = {"patch_dropout": 0.0, "precision": "fp32"}  # field -> the behaviour before it existed
_PRECISIONS = ("fp32", "bf16")


def _normalise(images: Sequence[np.ndarray]) -> torch.Tensor:
    """H×W×3 uint8 RGB images -> B×3×H×W float tensor with LDVC's (ImageNet) normalisation."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - _MEAN) / _STD


def sample_batch(rng: np.random.Generator, batch_size: int, image_size: int,
                 two_object_prob: float = 0.5) -> Tuple[torch.Tensor, List[str]]:
    """Normalised B×3×S×S images of one or two random objects and their captions."""
    images, captions = [], []
    for _ in range(batch_size):
        count = 2 if rng.random() < two_object_prob else 1
        ids = rng.choice(len(CLASS_NAMES), size=count, replace=False).tolist()
        image, _, drawn = render_scene(rng, ids, image_size, radius_range=(0.2, 0.32))
        images.append(image)
        template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
        captions.append(template.format(make_caption(drawn or ids)))
    return _normalise(images), captions


def _batches(rng: np.random.Generator, cfg: "PretrainConfig") -> Iterator[Tuple[torch.Tensor, List[str]]]:
    """``cfg.steps`` batches of :func:`sample_batch`, each rendered in a background thread while the
    previous one trains (rendering is NumPy/OpenCV work, ~10% of a step, that overlaps torch's); one
    thread draws them in order from ``rng``, so the batches are those of rendering in the loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(sample_batch, rng, cfg.batch_size, cfg.image_size, cfg.two_object_prob)
        for step in range(cfg.steps):
            batch = pending.result()
            if step + 1 < cfg.steps:
                pending = pool.submit(sample_batch, rng, cfg.batch_size, cfg.image_size, cfg.two_object_prob)
            yield batch


def contrastive_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, captions: Sequence[str],
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets: pairs whose captions are identical are all positives
    (with 16 classes a batch repeats captions, and calling those negatives would be wrong)."""
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    logits = logit_scale.exp().clamp(max=100) * image_feat @ text_feat.T
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.T.log_softmax(1), 1).mean())


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer, *, seed: int = 12345, per_class: int = 25,
                       image_size: int = 64) -> Dict[str, float]:
    """Classify held-out single-object images against "this is a photo of a <class>." for all 16
    classes (accuracy in %, overall / seen / unseen, and chance)."""
    model.eval()
    rng = np.random.default_rng(seed)
    text = F.normalize(model.encode_text(tokenizer([EVAL_TEMPLATE.format(c) for c in CLASS_NAMES])), dim=-1)
    correct = np.zeros(len(CLASS_NAMES))
    for k in range(len(CLASS_NAMES)):
        images = [render_scene(rng, [k], image_size, radius_range=(0.2, 0.32))[0] for _ in range(per_class)]
        pred = (F.normalize(model.encode_image(_normalise(images)), dim=-1) @ text.T).argmax(1)
        correct[k] = (pred == k).float().mean().item()
    return {"accuracy": float(100 * correct.mean()), "accuracy_seen": float(100 * correct[SEEN_CLASSES].mean()),
            "accuracy_unseen": float(100 * correct[UNSEEN_CLASSES].mean()), "chance": 100 / len(CLASS_NAMES)}


def encode_captions(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` (B×context token ids -> B×embed_dim), run only up to the
    batch's longest caption: the text tower is causal and pools the [EOS] token (the highest id), so the
    padding after the last [EOS] changes nothing before it; the result equals ``encode_text`` to float
    rounding at ~19 of 24 positions' cost."""
    if model.text_pool_type != "argmax":
        raise ValueError(f"encode_captions expects open_clip's 'argmax' text pooling, got {model.text_pool_type!r}.")
    eos = tokens.argmax(dim=-1)
    n = int(eos.max()) + 1
    x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    return x[torch.arange(len(x)), eos] @ model.text_projection


def _train_precision(precision: str):
    """Context of a training forward. "bf16": bfloat16 autocast (matrix products ~2.6× faster on a CPU
    with AVX512-BF16), with the math attention kernel, because the CPU flash-attention kernel's bfloat16
    backward is ~4× slower than its float32 one at 65 tokens; the loss is taken in float32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    stack = contextlib.ExitStack()
    stack.enter_context(autocast("cpu", PRECISION_DTYPES[precision]))
    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def _build(image_size: int) -> Tuple[torch.nn.Module, object]:
    model = open_clip.create_model(TINY_CLIP_MODEL, pretrained=None)
    if model.visual.image_size[0] != image_size:
        raise ValueError(f"{TINY_CLIP_MODEL} is configured for {model.visual.image_size[0]} px, not {image_size}.")
    return model, open_clip.get_tokenizer(TINY_CLIP_MODEL)


def pretrain_tiny_clip(out_path: str, cfg: PretrainConfig = PretrainConfig(), *, progress: bool = True) -> Dict:
    """Train LDVC-Tiny contrastively on the shapes world, write it to ``out_path`` (atomically) and
    return its metrics (zero-shot accuracy on held-out images, final loss, time).

    The caller's global torch RNG is left as it was: pretraining on first use happens while the
    LDVC model is being built, and the prompts and head built after it must get the same initial
    values whether the tiny CLIP was cached or not (otherwise a first run differs from later ones)."""
    with torch.random.fork_rng(devices=[]):
        return _pretrain(out_path, cfg, progress)


def _pretrain(out_path: str, cfg: PretrainConfig, progress: bool) -> Dict:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model, tokenizer = _build(cfg.image_size)
    model.train()
    # The world has a few dozen words: random, frozen word vectors serve, and leaving the 49408-row
    # token embedding out of the optimiser makes each step ~20% faster on a CPU.
    model.token_embedding.weight.requires_grad_(False)
    # FLIP (Li et al., "Scaling Language-Image Pre-training via Masking", arXiv 2212.00794): training
    # on a random share 1 - patch_dropout of each image's patch tokens (the class token always kept);
    # at 0.5 a step costs ~40% less CPU here, and every 8×8 patch of an object still shows its colour
    # and pattern. Training only: evaluation, the saved weights and every later use see all tokens.
    if cfg.patch_dropout:
        model.visual.patch_dropout = PatchDropout(cfg.patch_dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / cfg.warmup_steps, 1.0)
                                              * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    start, losses = time.perf_counter(), []
    bar = tqdm(_batches(rng, cfg), total=cfg.steps, desc="Pretraining tiny CLIP on shapes", disable=not progress,
               unit="step")
    for images, captions in bar:
        with _train_precision(cfg.precision):
            image_feat, text_feat = model.encode_image(images), encode_captions(model, tokenizer(captions))
        loss = contrastive_loss(F.normalize(image_feat.float(), dim=-1), F.normalize(text_feat.float(), dim=-1),
                                captions, model.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    metrics = zero_shot_accuracy(model, tokenizer, image_size=cfg.image_size)
    metrics.update(final_loss=float(np.mean(losses[-20:])), seconds=time.perf_counter() - start,
                   config=dataclasses.asdict(cfg))
    with atomic_path(out_path) as tmp:
        torch.save({"state_dict": model.state_dict(), "ldvc_tiny_clip": metrics}, tmp)
    logger.info(f"Tiny CLIP written to {out_path}: zero-shot accuracy {metrics['accuracy']:.1f}% "
                f"(seen {metrics['accuracy_seen']:.1f}%, unseen {metrics['accuracy_unseen']:.1f}%, "
                f"chance {metrics['chance']:.1f}%) after {metrics['seconds']:.0f} s.")
    return metrics


# ``MODEL.CLIP.PRETRAINED`` tags of LDVC-Tiny, one pretraining recipe each (cached under its own digest).
TINY_CLIP_RECIPES: Dict[str, PretrainConfig] = {
    # 600 steps × 64 pairs in fp32 (~400 s of one core): the checkpoint of docs/shapes_benchmark.md's tables.
    TINY_CLIP_TAG: PretrainConfig(),
    # FLIP patch dropout 0.5 and bfloat16 autocast, ~150 s of one core. Opt-in: LDVC on its
    # seed-0 checkpoint beats the fp32 one's, but over pretraining seeds 0/1/2 hIoU goes 40.1 / 31.7 / 24.9
    # (fp32: 34.5 / 34.1), so the quick start keeps "shapes" (docs/shapes_benchmark.md).
    TINY_CLIP_TAG + "-quick": PretrainConfig(patch_dropout=0.5, precision="bf16"),
}
