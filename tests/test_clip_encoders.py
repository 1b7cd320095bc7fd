"""Prompted CLIP encoders against open_clip's own encoders (DESIGN §1.1)."""
import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling.backbone import PromptedCLIPBackbone, default_intermediate_layers
from ldvc_d2.modeling.clip import PromptedTextEncoder, PromptedVisionEncoder, build_clip_model

NAMES = ["cat", "potted plant", "tv monitor", "wall-concrete"]


def test_zero_prompts_reproduce_encode_image(vit_b16):
    model, _ = vit_b16
    enc = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[5, 11])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = enc(images)
        ref = F.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(out["global"], ref, atol=1e-5, rtol=0)
    assert out["dense"].shape == (2, 512, 14, 14)
    torch.testing.assert_close(out["dense"].norm(dim=1), torch.ones(2, 14, 14), atol=1e-5, rtol=0)
    assert [t.shape for t in out["intermediate"]] == [(2, 768, 14, 14)] * 2


def test_zero_prompts_dense_tokens_match_open_clip_tokens(vit_b16):
    model, _ = vit_b16
    enc = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[])
    images = torch.randn(1, 3, 224, 224)
    visual = copy.copy(model.visual)
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(images)  # open_clip: ln_post on all tokens, patch tokens (not projected)
        ref = F.normalize(tokens @ model.visual.proj, dim=-1)
        out = enc(images)["dense"].flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_zero_prompts_reproduce_encode_text(vit_b16):
    model, tok = vit_b16
    enc = PromptedTextEncoder(model, tok, num_prompts=0, init="template", template="{}")
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok(NAMES)), dim=-1)
        torch.testing.assert_close(enc(NAMES), ref, atol=1e-5, rtol=0)
    fixed = PromptedTextEncoder(model, tok, num_prompts=0, init="template", template="a photo of a {}.")
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok([f"a photo of a {n}." for n in NAMES])), dim=-1)
        torch.testing.assert_close(fixed(NAMES), ref, atol=1e-5, rtol=0)


def test_template_initialised_prompts_reproduce_the_template(vit_b16):
    """Hand-crafted init: the prompts are the template's per-layer hidden states, so at init the
    prompted encoder equals CLIP's embedding of the filled-in template (causal attention)."""
    model, tok = vit_b16
    enc = PromptedTextEncoder(model, tok, num_prompts=6, init="template", template="this is a photo of a {}.")
    assert enc.prompts.shape == (12, 6, 512)
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok([f"this is a photo of a {n}." for n in NAMES])), dim=-1)
        torch.testing.assert_close(enc(NAMES), ref, atol=1e-5, rtol=0)
        # Independent check of the stored states: layer 0's prompts are token + position embeddings.
        ids = tok(["this is a photo of a"])[0, 1:7]
        torch.testing.assert_close(enc.prompts[0], model.token_embedding(ids) + model.positional_embedding[1:7])
    rand = PromptedTextEncoder(model, tok, num_prompts=6, init="random", template="this is a photo of a {}.")
    with torch.no_grad():
        assert (rand(NAMES) - ref).abs().max() > 1e-3


def test_template_prompt_count_mismatch_is_a_clear_error(vit_b16):
    model, tok = vit_b16
    with pytest.raises(ValueError, match="TEXT_PROMPTS=6.*4 tokens before"):
        PromptedTextEncoder(model, tok, num_prompts=6, init="template", template="a photo of a {}")
    with pytest.raises(ValueError, match="exactly once"):
        PromptedTextEncoder(model, tok, num_prompts=6, init="template", template="a photo")


def _block_inputs(blocks, run):
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].detach().clone()), with_kwargs=True)
             for b in blocks]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_deep_visual_prompts_replace_the_previous_layer_outputs(tiny_clip):
    model, _ = tiny_clip
    enc = PromptedVisionEncoder(model.visual, num_prompts=3, intermediate_layers=[1])
    blocks = model.visual.transformer.resblocks
    inputs = _block_inputs(blocks, lambda: enc(torch.randn(2, 3, 64, 64)))
    assert len(inputs) == len(blocks)
    for i, x in enumerate(inputs):
        assert x.shape == (2, 3 + 1 + 64, 128)
        torch.testing.assert_close(x[:, :3], enc.prompts[i].detach().expand(2, -1, -1))


def test_deep_text_prompts_replace_the_previous_layer_outputs(tiny_clip):
    model, tok = tiny_clip
    enc = PromptedTextEncoder(model, tok, num_prompts=6, init="random", template="this is a photo of a {}.")
    blocks = model.transformer.resblocks
    inputs = _block_inputs(blocks, lambda: enc(["red circle", "blue star"]))
    for i, x in enumerate(inputs):
        torch.testing.assert_close(x[:, 1:7], enc.prompts[i].detach().expand(2, -1, -1))


def _bilinear(grid: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """h×w×C -> out_h×out_w×C by hand: output pixel i samples the input at (i + 0.5) * in / out - 0.5
    (half-pixel centres, align_corners=False), clamped to the grid, weighted by distance."""
    def taps(n_in, n_out):
        out = []
        for i in range(n_out):
            x = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
            lo = int(x)
            hi = min(lo + 1, n_in - 1)
            out.append((lo, hi, x - lo))
        return out

    rows = [(1 - fy) * grid[y0] + fy * grid[y1] for y0, y1, fy in taps(grid.shape[0], out_h)]
    return torch.stack([torch.stack([(1 - fx) * r[x0] + fx * r[x1] for x0, x1, fx in taps(grid.shape[1], out_w)])
                        for r in rows])


def test_positional_embedding_resized_to_the_input_grid(tiny_clip):
    model, _ = tiny_clip
    enc = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[0])
    gh, gw = model.visual.grid_size
    native = enc.positional_embedding(gh, gw)
    assert native is model.visual.positional_embedding
    pos = enc.positional_embedding(8, 12)
    assert pos.shape == (1 + 96, 128)
    torch.testing.assert_close(pos[0], native[0])
    grid = native[1:].detach().reshape(gh, gw, -1).double()
    torch.testing.assert_close(pos[1:].detach().double(), _bilinear(grid, 8, 12).reshape(96, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(enc.positional_embedding(5, 3)[1:].detach().double(),
                               _bilinear(grid, 5, 3).reshape(15, -1), atol=1e-6, rtol=0)
    out = enc(torch.randn(1, 3, 64, 96))
    assert out["dense"].shape == (1, 128, 8, 12) and out["intermediate"][0].shape == (1, 128, 8, 12)


def test_default_intermediate_layers():
    assert default_intermediate_layers(12, 2) == [6, 11]
    assert default_intermediate_layers(12, 3) == [6, 8, 11]
    assert default_intermediate_layers(24, 2) == [12, 23]


def test_backbone_api_and_frozen_clip():
    backbone = PromptedCLIPBackbone(clip_model="LDVC-Tiny", clip_pretrained="", visual_prompts=4, text_prompts=6,
                                    num_intermediate=2)
    backbone.train()
    assert not backbone.visual.visual.training and not backbone.text.transformer.training
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"visual.prompts", "text.prompts"}
    out = backbone(torch.randn(2, 3, 64, 64))
    assert set(out) == {"dense", "global", "intermediate"}
    assert out["dense"].shape == (2, 128, 8, 8) and out["global"].shape == (2, 128)
    assert len(out["intermediate"]) == 2
    text = backbone.encode_text(["red circle", "green star", "blue square"])
    assert text.shape == (3, 128)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    shapes = backbone.output_shape()
    assert shapes["dense"].channels == 128 and shapes["intermediate"].channels == 128


def test_clip_loading_errors(tmp_path):
    with pytest.raises(ValueError, match="no model named 'ViT-X-99'"):
        build_clip_model("ViT-X-99", "")
    with pytest.raises(FileNotFoundError, match="MODEL.CLIP.PRETRAINED.*does not exist"):
        build_clip_model("LDVC-Tiny", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="neither a local file nor a pretrained tag"):
        build_clip_model("ViT-B-16", "no-such-tag")


def test_clip_loads_a_local_checkpoint(tmp_path, tiny_clip):
    model, _ = tiny_clip
    path = os.path.join(tmp_path, "tiny.pt")
    torch.save(model.state_dict(), path)
    loaded, _ = build_clip_model("LDVC-Tiny", path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_offline_download_error_names_model_and_tag(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(RuntimeError, match="'ViT-B-16' with pretrained tag 'openai'.*MODEL.CLIP.PRETRAINED"):
        build_clip_model("ViT-B-16", "openai")


def test_openai_weights_are_built_with_quick_gelu(monkeypatch):
    import open_clip

    seen = {}
    tiny = build_clip_model("LDVC-Tiny", "")[0]

    def fake_create(name, pretrained=None, cache_dir=None, force_quick_gelu=False):
        seen[pretrained] = force_quick_gelu
        return tiny

    monkeypatch.setattr(open_clip, "create_model", fake_create)
    build_clip_model("ViT-B-16", "openai")
    build_clip_model("ViT-B-16", "laion2b_s34b_b88k")
    assert seen == {"openai": True, "laion2b_s34b_b88k": False}


def _keys_cubic(grid: torch.Tensor, n_out: int, a: float = -0.75, scale: float = 0.0) -> torch.Tensor:
    """n_in×C -> n_out×C by hand with Keys' cubic convolution kernel (a = -0.75), half-pixel centres,
    taps clamped to the grid: the "bicubic to the exact size" DeOP's released CLIP code uses. ``scale`` > 0:
    source coordinates (j + 0.5) / scale - 0.5, as ``F.interpolate(scale_factor=scale)`` without recomputing
    the scale from the output size (CLIPtrase's official resize)."""
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0
    n_in, rows = grid.shape[0], []
    for j in range(n_out):
        src = (j + 0.5) / scale - 0.5 if scale else (j + 0.5) * n_in / n_out - 0.5
        i0 = math.floor(src)
        rows.append(sum(kernel(src - i) * grid[min(max(i, 0), n_in - 1)] for i in range(i0 - 1, i0 + 3)))
    return torch.stack(rows)


def test_positional_embedding_bicubic_to_the_exact_size(tiny_clip):
    model, _ = tiny_clip
    gh, gw = model.visual.grid_size
    with torch.no_grad():  # a grid that varies along x only: the y direction is then an identity
        model.visual.positional_embedding[1:] = model.visual.positional_embedding[1:gw + 1].repeat(gh, 1)
    enc = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[0], pos_interpolation="bicubic_size")
    pos = enc.positional_embedding(gh, 11)[1:].detach().double().reshape(gh, 11, -1)
    row = model.visual.positional_embedding[1:gw + 1].detach().double()
    for y in range(gh):
        torch.testing.assert_close(pos[y], _keys_cubic(row, 11), atol=1e-5, rtol=0)
    bilinear = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[0]).positional_embedding(gh, 11)
    assert (bilinear[1:].detach().double().reshape(gh, 11, -1) - pos).abs().max() > 1e-3


def test_positional_embedding_bicubic_plus_a_tenth_is_the_official_formula_at_21(vit_b16):
    """CLIPtrase's official resize at 336 px (ViT-B/16: 14×14 -> 21×21): bicubic with scale factor
    (21 + 0.1) / 14 on both axes, written out separably with Keys' kernel; not a plain resize to 21×21."""
    model, _ = vit_b16
    enc = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[0], pos_interpolation="bicubic")
    with torch.no_grad():
        pos = enc.positional_embedding(21, 21).detach().double()
    grid = model.visual.positional_embedding[1:].detach().double().reshape(14, 14, -1)
    scale = 21.1 / 14
    cols = torch.stack([_keys_cubic(grid[:, x], 21, scale=scale) for x in range(14)], dim=1)  # 21×14×C
    want = torch.stack([_keys_cubic(cols[y], 21, scale=scale) for y in range(21)])  # 21×21×C
    torch.testing.assert_close(pos[1:].reshape(21, 21, -1), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0], model.visual.positional_embedding[0].detach().double())  # [CLS] kept
    plain = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[0], pos_interpolation="bicubic_size")
    assert (plain.positional_embedding(21, 21)[1:].detach().double() - pos[1:]).abs().max() > 1e-3
