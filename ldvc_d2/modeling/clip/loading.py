"""Building the (frozen) open_clip model that the prompted encoders wrap.

CLIP is chosen by open_clip model name (``MODEL.CLIP.MODEL``, e.g. ``ViT-B-16``, ``ViT-L-14``) and
weights (``MODEL.CLIP.PRETRAINED``): an open_clip pretrained tag such as ``openai``, a local
checkpoint file, or ``""`` for random initialisation (tests, and the tiny models of this project).
Model configs shipped in ``model_configs/`` (``LDVC-Tiny``) are registered with open_clip on import.
:func:`build_clip_text_model` builds the text tower alone from the same sources (models without an image tower).
"""
import contextlib
import logging
import os
import socket
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple
from urllib.parse import urlparse

import open_clip
import torch
from detectron2.utils import comm
from open_clip.factory import load_state_dict as read_open_clip_state_dict
from open_clip.model import _build_text_tower, resize_text_pos_embed
from torch import nn

__all__ = ["CLIPTextTower", "build_clip_model", "build_clip_text_model", "clip_tokenizer", "register_local_weights",
           "MODEL_CONFIG_DIR"]

logger = logging.getLogger(__name__)
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# (model name, tag) -> function(cache_dir or None) returning a local checkpoint path, for weights this
# project makes itself (the tiny CLIP pretrained on the shapes world, ldvc_d2.benchmarks.shapes).
_LOCAL_WEIGHTS: Dict[Tuple[str, str], Callable[[Optional[str]], str]] = {}


def register_local_weights(model_name: str, tag: str, provider: Callable[[Optional[str]], str]) -> None:
    """Make ``MODEL.CLIP.PRETRAINED=tag`` for ``model_name`` resolve to ``provider(cache_dir)``, a file path."""
    _LOCAL_WEIGHTS[(model_name, tag)] = provider


def _is_local_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)


def _check_request(model_name: str, pretrained: str) -> None:
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"MODEL.CLIP.MODEL: open_clip has no model named '{model_name}'. Known ViT models "
            f"include: {', '.join(m for m in open_clip.list_models() if m.startswith('ViT-B'))}; "
            f"see open_clip.list_models() for all."
        )
    if pretrained and _is_local_path(pretrained):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"MODEL.CLIP.PRETRAINED: checkpoint file '{pretrained}' does not exist. Point it "
                f"to a local open_clip/OpenAI checkpoint of '{model_name}', or to an open_clip tag."
            )
    elif pretrained and (model_name, pretrained) not in _LOCAL_WEIGHTS:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        tags += [t for (m, t) in _LOCAL_WEIGHTS if m == model_name]
        if pretrained not in tags:
            raise ValueError(
                f"MODEL.CLIP.PRETRAINED: '{pretrained}' is neither a local file nor a pretrained "
                f"tag of '{model_name}' (tags: {tags or 'none'}). Use one of the tags, a file path, or "
                f"'' for random initialisation."
            )


_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def _hub_reachable(model_name: str, tag: str, timeout: float = 3.0) -> bool:
    """Whether the host serving a pretrained tag accepts a connection within ``timeout`` seconds. Behind a
    proxy (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY set, either case) the host may be reachable only through
    the proxy, which the hub client uses: no direct probe, the host counts as reachable."""
    if any(os.environ.get(v) or os.environ.get(v.lower()) for v in _PROXY_VARIABLES):
        return True
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.get("hf_hub") else cfg.get("url", "")
    host = urlparse(url).hostname
    if not host:
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_if_unreachable(model_name: str, tag: str) -> Iterator[bool]:
    """Hugging Face's offline mode for the block when the weights' host is unreachable: the local cache
    answers at once, instead of the hub client retrying with back-off for about a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _hub_reachable(model_name, tag):
        yield bool(constants.HF_HUB_OFFLINE)
        return
    logger.info(f"The host of '{model_name}' / '{tag}' is unreachable: using the local weights cache only.")
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = saved


def _file_readable(path: str) -> bool:
    """Whether a checkpoint file can be read at all (its tensors need not fit any model)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt"):
                return True
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        return True
    except Exception as e:  # readable files that weights_only refuses still count
        return "Unsupported global" in str(e)


def _is_torchscript(path: str) -> bool:
    """Whether a file is a TorchScript archive (torch.jit.save: a zip with ``<name>/constants.pkl`` and
    ``<name>/code/``, as OpenAI's original CLIP files are), judged from the zip's names alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in n for n in names)


def _local_file_error(model_name: str, path: str, e: Exception) -> RuntimeError:
    """The error for a local CLIP file open_clip could not load: TorchScript, unreadable, or of another model."""
    text = str(e)
    if _is_torchscript(path):
        what = ("it is a TorchScript archive (as OpenAI's original CLIP files are): TorchScript files carry "
                "code and cannot be loaded safely, so ldvc_d2 does not load them. Use the open_clip tag "
                "instead (e.g. MODEL.CLIP.PRETRAINED 'openai') or an open_clip / Hugging Face format file of the "
                "weights (README, 'CLIP weights and offline use')")
    elif _file_readable(path):
        what = (f"it holds the weights of another architecture than '{model_name}' (set MODEL.CLIP.MODEL "
                "to the model the file was saved from)")
    else:
        what = "it is corrupt, truncated or not a CLIP checkpoint (copy it again)"
    return RuntimeError(f"MODEL.CLIP.PRETRAINED: cannot load CLIP checkpoint '{path}': {what}. "
                        f"({type(e).__name__}: {text.splitlines()[0] if text else ''})")


def _create(model_name: str, pretrained: str, cache_dir: Optional[str], quick_gelu: bool) -> torch.nn.Module:
    if not pretrained or _is_local_path(pretrained):
        try:
            return open_clip.create_model(model_name, pretrained=pretrained or None, force_quick_gelu=quick_gelu)
        except Exception as e:  # torch.load / load_state_dict raise many types for bad files
            if not pretrained:
                raise
            raise _local_file_error(model_name, pretrained, e) from e
    with _offline_if_unreachable(model_name, pretrained) as offline:
        try:
            return open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir,
                                          force_quick_gelu=quick_gelu)
        except Exception as e:  # network errors come in many types (OSError, HTTPError, hub errors...)
            error = e
    raise _fetch_error(model_name, pretrained, error, offline) from error


def _fetch_error(model_name: str, pretrained: str, error: Exception, offline: bool) -> RuntimeError:
    """The error for weights of a pretrained tag that could not be obtained: how to fetch them offline."""
    return RuntimeError(
        f"Could not obtain the weights of open_clip model '{model_name}' with pretrained tag '{pretrained}' "
        f"({type(error).__name__}: {error}){' (offline: no connection to its host)' if offline else ''}. "
        f"If this machine is offline, download them on "
        f"a connected machine, e.g. python -c \"import open_clip; print(open_clip.download_pretrained("
        f"open_clip.get_pretrained_cfg('{model_name}', '{pretrained}'), cache_dir='clip_weights'))\" "
        f"(it prints the file's path), copy the folder 'clip_weights' here and set "
        f"MODEL.CLIP.CACHE_DIR to it (keeping the tag; README, 'CLIP weights and offline use'), "
        f"or set MODEL.CLIP.PRETRAINED to the copied file. HF_HUB_OFFLINE=1 skips the connection probe."
    )


class CLIPTextTower(nn.Module):
    """open_clip CLIP's text tower alone (C2S inference, seed 003 C13): the modules the text encoders read, named
    as in ``open_clip.CLIP`` (state-dict keys = a CLIP checkpoint's text keys); ``output_dim``: the joint width d."""

    def __init__(self, text: nn.Module, embed_dim: int):
        super().__init__()
        self.transformer, self.token_embedding = text.transformer, text.token_embedding
        self.positional_embedding, self.ln_final = text.positional_embedding, text.ln_final
        self.text_projection, self.text_pool_type = text.text_projection, text.pool_type
        self.context_length, self.vocab_size, self.output_dim = text.context_length, text.vocab_size, embed_dim
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)


def _text_tower(model_name: str, quick_gelu: bool) -> CLIPTextTower:
    """A randomly initialised text tower, built from the open_clip model config as ``open_clip.CLIP`` builds it."""
    cfg = open_clip.get_model_config(model_name)
    text_cfg = cfg["text_cfg"]
    if cfg.get("custom_text") or text_cfg.get("hf_model_name") or text_cfg.get("embed_cls"):
        raise ValueError(f"MODEL.CLIP.MODEL: '{model_name}' has a custom text tower (open_clip CustomTextCLIP); "
                         "the text-only loader and the text encoders support open_clip CLIP's own text transformer.")
    text = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu or bool(cfg.get("quick_gelu", False)))
    return CLIPTextTower(text, cfg["embed_dim"])


def _check_image_keys(state: Dict[str, torch.Tensor], model_name: str) -> None:
    """A ViT's patch embedding and depth: a file of another model fails here as in the full (strict) load."""
    vision = open_clip.get_model_config(model_name)["vision_cfg"]
    if vision.get("timm_model_name") or not isinstance(vision.get("layers"), int):
        return
    conv, p = state.get("visual.conv1.weight"), vision.get("patch_size", 16)
    depth = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    if conv is None or tuple(conv.shape) != (vision["width"], 3, p, p) or depth != vision["layers"]:
        raise ValueError(f"its image tower is not {model_name}'s (patch embedding "
                         f"{None if conv is None else tuple(conv.shape)}, {depth} blocks)")


def _create_text(model_name: str, pretrained: str, cache_dir: Optional[str], quick_gelu: bool) -> CLIPTextTower:
    """The text tower with the text tensors of the weights ``build_clip_model`` would load ("" random init)."""
    tower = _text_tower(model_name, quick_gelu)
    if not pretrained:
        return tower
    path, error = pretrained, None
    if not _is_local_path(pretrained):
        with _offline_if_unreachable(model_name, pretrained) as offline:
            try:  # network errors come in many types (OSError, HTTPError, hub errors...)
                tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
                path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
            except Exception as e:
                error = e
        if error is not None or not path:
            raise _fetch_error(model_name, pretrained, error or FileNotFoundError("no file"), offline) from error
    try:
        state = read_open_clip_state_dict(path, weights_only=True)  # tensors only: no code is unpickled
        _check_image_keys(state, model_name)
        resize_text_pos_embed(state, tower)
        tower.load_state_dict({k: state[k] for k in tower.state_dict() if k in state}, strict=True)
    except Exception as e:  # torch.load / load_state_dict raise many types for bad files
        raise _local_file_error(model_name, path, e) from e
    return tower


def _build_frozen(model_name: str, pretrained: str, cache_dir: Optional[str], create: Callable[[str, bool], nn.Module]):
    """``create(weights source, quick_gelu)``, frozen, in eval mode. Local rank 0 downloads the weights first
    while the others wait at a barrier, then they read the cache (N GPUs never download N copies); when
    rank 0 fails, every rank raises instead of waiting forever."""
    _check_request(model_name, pretrained)
    provider = _LOCAL_WEIGHTS.get((model_name, pretrained))
    # OpenAI's weights were trained with QuickGELU; open_clip's plain model names build GELU and only
    # warn. The pretrained tag says which (a local OpenAI file needs a "-quickgelu" model name).
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained and not provider else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    needs_fetch = bool(pretrained) and not _is_local_path(pretrained)
    distributed = needs_fetch and comm.get_world_size() > 1
    first = not distributed or comm.get_local_rank() == 0

    def make() -> nn.Module:
        return create(provider(cache_dir) if provider else pretrained, quick_gelu)

    model, error = None, None
    if first:  # local rank 0 downloads (or makes) the weights while the others wait
        try:
            model = make()
        except Exception as e:
            error = e
    if distributed and not all(comm.all_gather(error is None)):  # also the barrier the others wait at
        raise error or RuntimeError(
            f"Local rank 0 could not obtain the weights of '{model_name}' ('{pretrained}'); see its log."
        )
    if error is not None:
        raise error
    if model is None:
        model = make()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


_SHARED_TOKENIZERS: Dict[str, Any] = {}


def clip_tokenizer(model_name: str) -> Any:
    """open_clip's tokenizer of ``model_name``. CLIP's own BPE tokenizer (``SimpleTokenizer``: building its
    tables takes ~0.1 s) is built once per process and shared by every model (it keeps only a cache of
    encoded words); other tokenizers (Hugging Face ones, not safe to call from several threads at once) are
    built for each caller."""
    if model_name not in _SHARED_TOKENIZERS:
        tokenizer = open_clip.get_tokenizer(model_name)
        if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
            return tokenizer
        _SHARED_TOKENIZERS[model_name] = tokenizer
    return _SHARED_TOKENIZERS[model_name]


def build_clip_model(model_name: str, pretrained: str, *, cache_dir: Optional[str] = None) -> Tuple[nn.Module, Any]:
    """Return ``(clip_model, open_clip tokenizer)``, every CLIP parameter frozen, in eval mode."""
    model = _build_frozen(model_name, pretrained, cache_dir,
                          lambda source, quick_gelu: _create(model_name, source, cache_dir, quick_gelu))
    logger.info(f"Built open_clip '{model_name}' (weights: {pretrained or 'random init'}).")
    return model, clip_tokenizer(model_name)


def build_clip_text_model(model_name: str, pretrained: str, *,
                          cache_dir: Optional[str] = None) -> Tuple[CLIPTextTower, Any]:
    """Return ``(text tower, open_clip tokenizer)``: CLIP's text tower only, frozen, in eval mode.

    The weight sources and text tensors of :func:`build_clip_model`; the image tower is never built (its tensors
    are read, not kept). ``pretrained`` "": open_clip's random init without the image tower's draws that precede
    it in :func:`build_clip_model`, so the numbers differ from its at one seed (the distributions agree).
    """
    tower = _build_frozen(model_name, pretrained, cache_dir,
                          lambda source, quick_gelu: _create_text(model_name, source, cache_dir, quick_gelu))
    logger.info(f"Built the text tower of open_clip '{model_name}' (weights: {pretrained or 'random init'}).")
    return tower, clip_tokenizer(model_name)
