"""State the segmentor keeps between calls: the eval-mode text cache (cleared when weights are loaded)
and the optimizer's parameter roles (every prompt-like parameter of every head variant gets
SOLVER.PROMPT_LR_MULTIPLIER, every norm SOLVER.WEIGHT_DECAY_NORM), against role lists written out here."""
import re

import pytest
import torch
from detectron2.modeling import build_model

from ldvc_d2.checkpoint import Checkpointer
from ldvc_d2.solver import build_optimizer
from tests.conftest import tiny_cfg

NAMES = ["red circle", "blue star", "green square"]

# The prompt-like parameters of each variant, by name (LDVC: VLPT's visual and text prompts; ZegCLIP: its
# deep visual prompts, their shared projection and the LayerNorm before ln_post; no prompts: none).
PROMPTS = {
    "configs/demo.yaml": {"backbone.visual.prompts", "backbone.text.prompts"},
    "configs/shapes/ldvc_vj_none.yaml": {"backbone.visual.prompts", "backbone.text.prompts"},
    "configs/shapes/no_language.yaml": {"backbone.visual.prompts"},
    "configs/shapes/frozen_clip.yaml": set(),
    "configs/shapes/zegclip.yaml": {"backbone.visual.prompts", "backbone.visual.prompt_proj.weight",
                                    "backbone.visual.prompt_proj.bias", "backbone.visual.prompt_norm.weight",
                                    "backbone.visual.prompt_norm.bias"},
}
NORM = re.compile(r"(^|\.)(norm\w*|intermediate_norms\.\d+|prompt_norm)\.(weight|bias)$")  # LayerNorms by name


def _model(config="configs/demo.yaml", *opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg(config, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *opts))


def test_load_state_dict_clears_the_text_cache(tmp_path):
    model = _model().eval()
    cached = model.text_features(NAMES)
    assert model.text_features(NAMES) is cached
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)  # random changes (a constant shift is removed by CLIP's LayerNorms)
    state["backbone.text.prompts"] += 0.5 * torch.randn(state["backbone.text.prompts"].shape, generator=g)
    model.load_state_dict(state)
    with torch.no_grad():
        fresh = model.backbone.encode_text(NAMES)
    assert (fresh - cached).abs().max() > 1e-3  # the new prompts change the class embeddings
    torch.testing.assert_close(model.text_features(NAMES), fresh)
    # the same through the checkpointer train_net.py and the predictor load weights with
    state["backbone.text.prompts"] += 0.5 * torch.randn(state["backbone.text.prompts"].shape, generator=g)
    torch.save({"model": state}, tmp_path / "w.pth")
    before = model.text_features(NAMES)
    Checkpointer(model, str(tmp_path)).load(str(tmp_path / "w.pth"))
    with torch.no_grad():
        fresh = model.backbone.encode_text(NAMES)
    assert (fresh - before).abs().max() > 1e-3
    torch.testing.assert_close(model.text_features(NAMES), fresh)


@pytest.mark.parametrize("config", sorted(PROMPTS))
def test_every_prompt_like_parameter_gets_the_prompt_lr(config):
    cfg = tiny_cfg(config, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "SOLVER.BASE_LR", "0.01",
                   "SOLVER.PROMPT_LR_MULTIPLIER", "7.0", "SOLVER.WEIGHT_DECAY", "0.03", "SOLVER.WEIGHT_DECAY_NORM",
                   "0.002")
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(group_of)  # each parameter in one group
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {id(p) for p in trainable.values()} == set(group_of)
    assert PROMPTS[config] <= set(trainable)
    for name, p in trainable.items():
        g = group_of[id(p)]
        assert g["lr"] == pytest.approx(0.07 if name in PROMPTS[config] else 0.01), name
        assert g["weight_decay"] == pytest.approx(0.002 if NORM.search(name) else 0.03), name


def _counting_encoder(model):
    calls = []
    encode = model.encode_text

    def counted(names):
        calls.append(tuple(names))
        return encode(names)
    model.encode_text = counted
    return calls


def test_frozen_text_is_encoded_once_in_training():
    model = _model("configs/shapes/zegclip.yaml").train()  # ZegCLIP: frozen text (no text prompts)
    calls = _counting_encoder(model)
    first = model.text_features(NAMES)
    assert not first.requires_grad
    assert model.text_features(NAMES) is first and len(calls) == 1
    with torch.no_grad():
        reference = model.backbone.encode_text(NAMES)
    torch.testing.assert_close(first, reference)  # the cached value is the frozen encoder's output
    model.text_features(NAMES[:2])
    assert len(calls) == 2  # another vocabulary, another entry
    model.load_state_dict(model.state_dict())
    model.text_features(NAMES)
    assert len(calls) == 3  # loading weights forgets it


@pytest.mark.parametrize("config", ["configs/demo.yaml", "configs/shapes/no_language.yaml"])
def test_trainable_text_is_encoded_every_training_step(config):
    model = _model(config).train()
    calls = _counting_encoder(model)
    with torch.no_grad():  # a detached result in training is never cached
        model.text_features(NAMES)
    text = model.text_features(NAMES)
    assert len(calls) == 2
    if config == "configs/demo.yaml":  # text prompts: the embeddings carry gradients, step after step
        assert text.requires_grad
        assert model.text_features(NAMES) is not text and len(calls) == 3
