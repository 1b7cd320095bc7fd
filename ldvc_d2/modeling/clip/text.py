"""Prompted CLIP text encoder: deep language prompts (LDVC §3.2, VLPT, language branch).

The sequence of a class is ``[SOS; e_p; e_c; suffix; EOS]``: ``e_p`` are ``num_prompts`` learnable
tokens, ``e_c`` the class-name tokens, ``suffix`` the fixed tokens after ``{}`` in the template (e.g.
"."), and the [EOS] output is the global token that becomes the class embedding. As in deep VPT the
prompt slots of every layer's *input* are overwritten by that layer's own prompts.

Hand-crafted initialisation (the paper's Table 6, +4.5 mIoU(U) over random init): the template's
prefix (the words before ``{}``, e.g. "this is a photo of a") is run through the pretrained encoder
and each layer's input hidden states at those token positions become that layer's initial prompts.
CLIP's text attention is causal, so these states do not depend on the class name: with this
initialisation the prompted encoder reproduces CLIP's embedding of the filled-in template exactly.
This needs exactly ``num_prompts`` prefix tokens; the default template "this is a photo of a {}."
has 6, the paper's prompt count. Random initialisation (``init="random"``) draws N(0, 0.02²), as
CoOp does, and ignores the prefix. With ``num_prompts=0`` the prefix stays as ordinary fixed tokens
(frozen CLIP with a hand-crafted prompt).
"""
import hashlib
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .templates import resolve_templates
from .vision import run_block

__all__ = ["PromptedTextEncoder", "RandomClassEmbedding", "TemplateEnsembleTextEncoder"]


def adopt_text_tower(encoder: nn.Module, clip_model: nn.Module, name: str) -> None:
    """Give ``encoder`` CLIP's text modules under open_clip's names (shared, not copied; the attention mask
    as a non-persistent buffer). The tower must pool at the [EOS] token (``name`` is named in the error)."""
    if getattr(clip_model, "text_pool_type", "argmax") != "argmax":
        raise NotImplementedError(f"{name} needs a CLIP text tower pooled at the [EOS] token "
                                  f"(text_pool_type='argmax'), got '{clip_model.text_pool_type}'.")
    for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
        setattr(encoder, attr, getattr(clip_model, attr))
    encoder.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
    encoder.context_length, encoder.width = encoder.positional_embedding.shape


def shifted_eos(tokens: torch.Tensor, n: int, class_names: Sequence[str], context_length: int, inserted: str,
                advice: str = "Shorten them.") -> torch.Tensor:
    """Each sequence's [EOS] position (its largest token id) after ``n`` tokens are inserted before it; class
    names that then no longer fit the context are an error naming them (``inserted`` says what was inserted)."""
    eos = tokens.argmax(dim=-1) + n
    too_long = [name for name, e in zip(class_names, eos.tolist()) if e >= context_length]
    if too_long:
        raise ValueError(f"Class names too long for the text encoder's {context_length} tokens with {inserted}: "
                         f"{too_long[:3]}. {advice}")
    return eos


def text_blocks_and_head(encoder: nn.Module, x: torch.Tensor, eos: torch.Tensor, before_block=None) -> torch.Tensor:
    """CLIP's text transformer on C×L token embeddings ``x`` (causal mask cut to L), then its head: ln_final at
    each sequence's [EOS], the text projection, L2 normalisation -> C×D (open_clip's ``encode_text``).
    ``before_block(i, x)`` may rewrite the input of block i (deep prompts)."""
    length = x.shape[1]
    mask = encoder.attn_mask[:length, :length] if encoder.attn_mask is not None else None
    batch_first = getattr(encoder.transformer, "batch_first", True)
    for i, block in enumerate(encoder.transformer.resblocks):
        if before_block is not None:
            x = before_block(i, x)
        x = run_block(block, x, batch_first, attn_mask=mask)
    x = encoder.ln_final(x[torch.arange(x.shape[0], device=x.device), eos])
    proj = encoder.text_projection
    x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return F.normalize(x, dim=-1)


def _split_template(template: str):
    if template.count("{}") != 1:
        raise ValueError(
            f"MODEL.CLIP.TEXT_TEMPLATE must contain '{{}}' exactly once, got '{template}'."
        )
    prefix, suffix = template.split("{}")
    return prefix.strip(), suffix


class PromptedTextEncoder(nn.Module):
    """Encodes class names into L2-normalised C×d embeddings through CLIP's prompted text tower.

    Args:
        clip_model: an open_clip ``CLIP`` (its text tower is used; frozen).
        tokenizer: the model's open_clip tokenizer (SOS/EOS ids, context length).
        num_prompts: learnable tokens per layer (the paper: 6).
        init: "template" (hand-crafted, see module docstring) or "random".
        template: e.g. "this is a photo of a {}."
    """

    def __init__(self, clip_model: nn.Module, tokenizer, *, num_prompts: int, init: str, template: str):
        super().__init__()
        adopt_text_tower(self, clip_model, "PromptedTextEncoder")
        if init not in ("template", "random"):
            raise ValueError(f"MODEL.CLIP.TEXT_PROMPT_INIT must be 'template' or 'random', got '{init}'.")
        self.tokenizer = tokenizer
        self.num_layers = len(self.transformer.resblocks)
        self.num_prompts = num_prompts
        self.prefix, self.suffix = _split_template(template)

        if num_prompts == 0:
            self.register_parameter("prompts", None)
        elif init == "random":
            self.prompts = nn.Parameter(torch.randn(self.num_layers, num_prompts, self.width) * 0.02)
        else:
            self.prompts = nn.Parameter(self._template_hidden_states(template))

    def _tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.positional_embedding.device)

    @torch.no_grad()
    def _template_hidden_states(self, template: str) -> torch.Tensor:
        """Input hidden states of every layer at the prefix-token positions: L×n×width."""
        tokens = self._tokenize([self.prefix])  # [SOS, prefix..., EOS, pad...]
        num_prefix = int(tokens.argmax(dim=-1)) - 1
        if num_prefix != self.num_prompts:
            raise ValueError(
                f"MODEL.CLIP.TEXT_PROMPTS={self.num_prompts} but the template '{template}' has "
                f"{num_prefix} tokens before '{{}}' ('{self.prefix}'); hand-crafted initialisation needs "
                "them equal. Use a template with that many prefix tokens, or "
                "MODEL.CLIP.TEXT_PROMPT_INIT='random'."
            )
        length = num_prefix + 1
        x = self.token_embedding(tokens[:, :length]) + self.positional_embedding[:length]
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        batch_first = getattr(self.transformer, "batch_first", True)
        states = []
        for block in self.transformer.resblocks:
            states.append(x[0, 1:length].clone())
            x = run_block(block, x, batch_first, attn_mask=mask)
        return torch.stack(states)

    def forward(self, class_names: List[str]) -> torch.Tensor:
        """class_names: C strings. Returns the C×d class embeddings T, L2-normalised."""
        if len(class_names) == 0:
            raise ValueError("PromptedTextEncoder: the list of class names is empty.")
        n = self.num_prompts
        body = [(f"{self.prefix} {c}" if (n == 0 and self.prefix) else c) + self.suffix for c in class_names]
        tokens = self._tokenize(body)  # [SOS, body..., EOS, pad...]
        eos = shifted_eos(tokens, n, class_names, self.context_length, f"{n} prompts")
        length = int(eos.max()) + 1  # causal attention: tokens after [EOS] never reach it
        emb = self.token_embedding(tokens)
        c = len(class_names)
        if n:  # open n slots after [SOS]; every layer writes its prompts into them
            emb = torch.cat([emb[:, :1], emb.new_zeros(c, n, self.width), emb[:, 1 : length - n]], dim=1)
        x = emb[:, :length] + self.positional_embedding[:length].to(emb.dtype)

        def write_prompts(i: int, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :1], self.prompts[i].to(x.dtype).expand(c, -1, -1), x[:, 1 + n :]], 1)
        return text_blocks_and_head(self, x, eos, write_prompts if n else None)


class RandomClassEmbedding(nn.Module):
    """The "no language" control: each class name maps to a fixed random unit vector (seeded by the
    name's SHA-1), so class embeddings carry no meaning and nothing can transfer to unseen classes.
    Seen classes can still be learned, because the decoder adapts to any fixed anchors."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def forward(self, class_names: List[str]) -> torch.Tensor:
        vectors = []
        for name in class_names:
            seed = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "little")
            vectors.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(vectors), dim=-1).to(self._device_probe.device)


class TemplateEnsembleTextEncoder(nn.Module):
    """Frozen CLIP class embeddings averaged over prompt templates (CLIPtrase T4; CLIP's ensembling).

    t_c = normalize(mean_k normalize(E_txt(template_k(c)))), as CLIPtrase's
    ``clip_self_correlation.py:90-101``. All C·K sentences go through the text tower in chunks of
    ``chunk_size`` (no per-class loop); the tower is :class:`PromptedTextEncoder` with 0 prompts and
    the bare template "{}", i.e. CLIP's own text embedding of each filled-in sentence.

    Args:
        clip_model / tokenizer: as :class:`PromptedTextEncoder`.
        templates: a set name of ``clip.templates.TEMPLATE_SETS`` ("imagenet80", "vild14") or a list of
            templates, each with exactly one "{}".
        chunk_size: sentences per text-tower call (memory bound).
    """

    def __init__(self, clip_model: nn.Module, tokenizer, *, templates: Union[str, Sequence[str]] = "imagenet80",
                 chunk_size: int = 1024):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"TemplateEnsembleTextEncoder: chunk_size must be >= 1, got {chunk_size}.")
        self.templates = resolve_templates(templates)
        self.chunk_size = chunk_size
        self.encoder = PromptedTextEncoder(clip_model, tokenizer, num_prompts=0, init="template", template="{}")

    def forward(self, class_names: List[str]) -> torch.Tensor:
        """class_names: C strings. Returns the C×d template-ensemble embeddings, L2-normalised."""
        if len(class_names) == 0:
            raise ValueError("TemplateEnsembleTextEncoder: the list of class names is empty.")
        texts = [t.replace("{}", c) for c in class_names for t in self.templates]
        emb = torch.cat([self.encoder(texts[i : i + self.chunk_size]) for i in range(0, len(texts), self.chunk_size)])
        return F.normalize(emb.reshape(len(class_names), len(self.templates), -1).mean(dim=1), dim=-1)
