"""The tiny CLIP shipped with the package : the ``"shapes"`` recipe's checkpoint as
safetensors in ``assets/`` next to this file (tensors only: nothing runs when it is read), so a fresh
machine's quick start needs no pretraining; :func:`.cache.ensure_tiny_clip` writes it to the cache.

The random, frozen token embedding (49408 rows, 80% of a full checkpoint) is not stored: it is redrawn
exactly as pretraining drew it (the recipe's seed, the same ``open_clip.create_model`` call), checked by
its SHA-256, with the rows of the pretraining vocabulary stored for a machine that draws differently (a
CPU without AVX2, e.g. ARM, or another torch): only those rows are ever read by the shapes configs.
``tools/pretrain_tiny_clip.py --ship`` writes the file.
"""
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Dict, List, Tuple, Union

import open_clip
import torch

from ...utils.io import atomic_path
from .tiny_clip import (
    CAPTION_TEMPLATES, EVAL_TEMPLATE, TINY_CLIP_MODEL, TINY_CLIP_RECIPES, TINY_CLIP_TAG, PretrainConfig, _build,
)
from .world import CLASS_NAMES, GENERATOR_VERSION, make_caption

__all__ = ["SHIPPED_DIR", "shipped_path", "stale_shipped_files", "write_shipped", "read_shipped",
           "pretraining_vocabulary"]

logger = logging.getLogger(__name__)
SHIPPED_DIR = Path(__file__).resolve().parent / "assets"
_SHIPPED_FORMAT = "ldvc_tiny_clip/1"
_TOKEN_KEY = "token_embedding.weight"
_VOCAB_IDS, _VOCAB_ROWS = "token_embedding.vocabulary_ids", "token_embedding.vocabulary_rows"


def shipped_path(cfg: PretrainConfig = PretrainConfig()) -> Path:
    """The package's checkpoint of recipe ``cfg`` (named by its digest; it need not exist)."""
    return SHIPPED_DIR / f"{TINY_CLIP_MODEL}-{TINY_CLIP_TAG}-{cfg.digest()}.safetensors"


def stale_shipped_files() -> List[Path]:
    """Files in :data:`SHIPPED_DIR` that no recipe of ``TINY_CLIP_RECIPES`` names (older digests)."""
    current = {shipped_path(cfg).name for cfg in TINY_CLIP_RECIPES.values()}
    return sorted(p for p in SHIPPED_DIR.glob("*.safetensors") if p.name not in current)


def pretraining_vocabulary(tokenizer) -> torch.Tensor:
    """Sorted ids of every token that pretraining captions (all templates × every one- or two-class
    caption), the evaluation prompt and the class names can hold, the padding id included."""
    n = len(CLASS_NAMES)
    groups = [[k] for k in range(n)] + [[k, k] for k in range(n)] + [[a, b] for a in range(n) for b in range(n) if a != b]
    texts = [t.format(make_caption(g)) for t in CAPTION_TEMPLATES for g in groups]
    texts += [EVAL_TEMPLATE.format(c) for c in CLASS_NAMES] + list(CLASS_NAMES)
    return torch.unique(tokenizer(texts))


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


def _initial_token_embedding(cfg: PretrainConfig) -> torch.Tensor:
    """The token embedding pretraining starts from (and keeps: it is frozen): the same seed and
    ``open_clip.create_model`` call as :func:`.tiny_clip._pretrain`, the caller's RNG left as it was."""
    root, quiet = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(quiet)  # open_clip's "initialized randomly" warning: only the frozen embedding is used
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model, _ = _build(cfg.image_size)
    finally:
        root.removeFilter(quiet)
    return model.token_embedding.weight.detach().clone()


def write_shipped(checkpoint: str, out_path: str, cfg: PretrainConfig = PretrainConfig()) -> Dict:
    """Write a pretrained checkpoint of recipe ``cfg`` (``pretrain_tiny_clip``'s file) as the package's
    safetensors file: every tensor but the token embedding, whose pretraining-vocabulary rows are kept and
    whose SHA-256 is recorded; the recipe and metrics go into the metadata. Returns the metadata."""
    from safetensors.torch import save_file

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state, metrics = saved["state_dict"], saved.get("ldvc_tiny_clip", {})
    if metrics.get("config", dataclasses.asdict(cfg)) != dataclasses.asdict(cfg):
        raise ValueError(f"{checkpoint} was pretrained with {metrics['config']}, not the recipe {dataclasses.asdict(cfg)}.")
    token = state[_TOKEN_KEY]
    if not torch.equal(token, _initial_token_embedding(cfg)):
        raise ValueError(f"{checkpoint}: its token embedding is not the one this torch / open_clip draws for seed "
                         f"{cfg.seed}, so a shipped file could not restore it exactly; pretrain it here "
                         "(tools/pretrain_tiny_clip.py --force --ship).")
    vocab = pretraining_vocabulary(open_clip.get_tokenizer(TINY_CLIP_MODEL))
    tensors = {k: v.contiguous() for k, v in state.items() if k != _TOKEN_KEY}
    tensors.update({_VOCAB_IDS: vocab, _VOCAB_ROWS: token[vocab].contiguous()})
    metadata = {"format": _SHIPPED_FORMAT, "digest": cfg.digest(), "recipe": json.dumps(dataclasses.asdict(cfg)),
                "world": str(GENERATOR_VERSION), "metrics": json.dumps(metrics), "token_embedding_sha256": _sha256(token),
                "token_embedding_shape": json.dumps(list(token.shape))}
    with atomic_path(out_path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return metadata


def read_shipped(path: Union[str, Path], cfg: PretrainConfig = PretrainConfig()) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """The full state dict and metrics of a file :func:`write_shipped` wrote. The token embedding is
    redrawn as pretraining drew it; when this machine draws another one (its SHA-256 differs: torch's
    ``normal_`` takes another code path on CPUs without AVX2, e.g. ARM, and may change between versions),
    the file's pretraining-vocabulary rows replace those rows of it (logged): every text of the shapes
    world then embeds exactly as with the pretrained checkpoint, other words get other, equally untrained,
    vectors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise RuntimeError(f"Cannot read the tiny CLIP checkpoint '{path}' ({type(e).__name__}: {e}): the "
                           "file is damaged; reinstall ldvc_d2 or pretrain the tiny CLIP with "
                           "`python tools/pretrain_tiny_clip.py --force`.") from e
    if meta.get("format") != _SHIPPED_FORMAT or meta.get("digest") != cfg.digest():
        raise ValueError(f"'{path}' is not a shipped tiny CLIP of recipe {cfg.digest()} (format "
                         f"{meta.get('format')!r}, digest {meta.get('digest')!r}); ship it again with "
                         "`python tools/pretrain_tiny_clip.py --ship`.")
    ids, rows = tensors.pop(_VOCAB_IDS), tensors.pop(_VOCAB_ROWS)
    token = _initial_token_embedding(cfg)
    if list(token.shape) != json.loads(meta["token_embedding_shape"]) or _sha256(token) != meta["token_embedding_sha256"]:
        logger.info(f"{path}: this machine draws another random token embedding for seed {cfg.seed} than "
                    "pretraining did (torch's normal_ differs between CPU kernels, e.g. ARM vs AVX2, and between "
                    f"versions); the {len(ids)} rows of the shapes world's words come from the file, so every shapes "
                    "config reads exactly the pretrained vectors; other words get other, equally untrained, ones.")
        token[ids] = rows
    tensors[_TOKEN_KEY] = token
    return tensors, json.loads(meta["metrics"])
