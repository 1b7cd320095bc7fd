"""DeOP's changes to the CLIP towers: patch severance (D3/D3′), additive prompts (D2), CoOp text (D5).

Each variant is checked against a direct formula written here (SEED_SYSTEMS §4.5), on random-weight
ViT-B-16 and LDVC-Tiny.
"""

import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling.clip import PromptedVisionEncoder
from ldvc_d2.modeling.clip.additive_prompts import AdditiveVisualPrompts
from ldvc_d2.modeling.clip.coop import CoOpTextEncoder, NoObjectEmbedding
from ldvc_d2.modeling.clip.severance import (
    MaskGuidedSeverance, PatchSeverance, severance_hooks, token_mask_weights,
)
from ldvc_d2.modeling.clip.surgery import run_block_with_attention
from ldvc_d2.modeling.clip.vision import run_block
from tests.test_surgery import with_random_biases

MODELS = ["vit_b16", "tiny_clip"]


def randomised(block):
    """A float64 copy of ``block`` with random biases and LayerNorm scales (open_clip inits them 0/1)."""
    return with_random_biases(block).double()


def heads_of(t, h):
    """B×N×D -> B×H×N×D/H."""
    b, n, d = t.shape
    return t.reshape(b, n, h, d // h).transpose(1, 2)


def direct_block(block, x, mix):
    """x + ls_1(W_o concat_h(mix(q_h, k_h, v_h)) + b_o), then the MLP, from the raw in_proj slices."""
    attn = block.attn
    d, h = attn.embed_dim, attn.num_heads
    z = block.ln_1(x)
    q, k, v = (heads_of(z @ attn.in_proj_weight[j * d:(j + 1) * d].T + attn.in_proj_bias[j * d:(j + 1) * d], h)
               for j in range(3))
    o = mix(q, k, v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(o @ attn.out_proj.weight.T + attn.out_proj.bias)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def last_block(request, model):
    clip_model, _ = request.getfixturevalue(model)
    torch.manual_seed(2)
    block = randomised(clip_model.visual.transformer.resblocks[-1])
    x = torch.randn(2, 1 + 9, block.attn.embed_dim, dtype=torch.float64)  # [CLS] + 3×3 patches
    return block, x


@pytest.mark.parametrize("model", MODELS)
def test_gps_alpha_zero_is_the_block_and_alpha_one_is_value_projection(request, model):
    block, x = last_block(request, model)
    torch.testing.assert_close(run_block_with_attention(block, x, PatchSeverance(0.0)),
                               run_block(block, x, batch_first=True), rtol=0, atol=1e-9)
    torch.testing.assert_close(run_block_with_attention(block, x, PatchSeverance(1.0)),
                               direct_block(block, x, lambda q, k, v: v), rtol=0, atol=1e-9)

    def mixed(q, k, v):
        return 0.3 * v + 0.7 * torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v

    torch.testing.assert_close(run_block_with_attention(block, x, PatchSeverance(0.3)), direct_block(block, x, mixed),
                               rtol=0, atol=1e-9)


def direct_token_masks(logits, grid):
    """Per proposal and token: 1 for [CLS], else σ(bilinear(M_n)) at the patch, by explicit loops."""
    b, p = logits.shape[:2]
    out = torch.ones(b, p, 1 + grid[0] * grid[1], dtype=torch.float64)
    for i in range(b):
        for n in range(p):
            small = F.interpolate(logits[i, n][None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
            for r in range(grid[0]):
                for c in range(grid[1]):
                    out[i, n, 1 + r * grid[1] + c] = torch.sigmoid(small[r, c])
    return out


@pytest.mark.parametrize("model", MODELS)
def test_mask_weighted_and_mask_guided_severance_equal_their_formulas(request, model):
    block, x = last_block(request, model)
    logits = torch.randn(2, 5, 12, 12, dtype=torch.float64) * 3
    masks = direct_token_masks(logits, (3, 3))
    weight = masks.sum(dim=1)  # w_l = Σ_n m_{n,l}; [CLS]: 5
    torch.testing.assert_close(token_mask_weights(logits, (3, 3)).double(), masks)
    got = run_block_with_attention(block, x, PatchSeverance(1.0, token_weight=token_mask_weights(logits, (3, 3)).sum(1)))
    torch.testing.assert_close(got, direct_block(block, x, lambda q, k, v: weight[:, None, :, None] * v),
                               rtol=0, atol=1e-5)

    def guided(q, k, v):
        a = torch.zeros(2, 10, 10, dtype=torch.float64)
        for i in range(2):
            for r in range(10):
                s = torch.stack([(masks[i, :, r] * masks[i, :, c]).sum() for c in range(10)])
                a[i, r] = torch.softmax(s, dim=0)
        return a[:, None] @ v

    got = run_block_with_attention(block, x, MaskGuidedSeverance(token_mask_weights(logits, (3, 3))))
    torch.testing.assert_close(got, direct_block(block, x, guided), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_tower_with_gps_alpha_zero_and_additive_prompts_against_a_manual_loop(request, model):
    clip_model, _ = request.getfixturevalue(model)
    enc = PromptedVisionEncoder(clip_model.visual, num_prompts=0, intermediate_layers=[])
    p = enc.patch_size
    images = torch.randn(1, 3, 3 * p, 2 * p)
    plain = enc(images)["dense"]
    torch.testing.assert_close(enc(images, hooks=severance_hooks([-1], 0.0))["dense"], plain, rtol=0, atol=1e-5)
    assert not torch.allclose(enc(images, hooks=severance_hooks([-1], 1.0))["dense"], plain, atol=1e-3)

    torch.manual_seed(3)
    prompts = AdditiveVisualPrompts([0, 2], grid=4, width=enc.width)
    v = clip_model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(1, 1, -1), x], dim=1) + enc.positional_embedding(3, 2)
    x = v.ln_pre(x + prompts(0, 3, 2))
    for i, block in enumerate(v.transformer.resblocks):
        if i == 2:
            x = x + prompts(2, 3, 2)
        x = run_block(block, x, getattr(v.transformer, "batch_first", True))
    x = v.ln_post(x) @ v.proj
    want = F.normalize(x[:, 1:], dim=-1).transpose(1, 2).reshape(1, -1, 3, 2)
    torch.testing.assert_close(enc(images, additive_prompts=prompts)["dense"], want, rtol=0, atol=1e-5)
    grid = prompts.prompts[1, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)  # resized bicubically, [CLS] row kept
    resized = F.interpolate(grid, size=(3, 2), mode="bicubic", align_corners=False)[0].flatten(1).T
    torch.testing.assert_close(prompts(2, 3, 2), torch.cat([prompts.prompts[1, :1], resized]))


def test_severance_hooks_check_their_arguments():
    with pytest.raises(ValueError, match="GPS_MODE"):
        severance_hooks([-1], 1.0, "soft")
    with pytest.raises(ValueError, match="2 alphas for 3 layers"):
        severance_hooks([0, 1, 2], [1.0, 0.5])
    with pytest.raises(ValueError, match="needs the proposal masks on the token grid"):
        severance_hooks([-1], 1.0, "mask_weighted")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PatchSeverance(1.5)
    assert [h.layer for h in severance_hooks([-2, -1], 0.5)] == [-2, -1]


def test_coop_with_template_context_is_clips_own_text_embedding(tiny_clip):
    model, tokenizer = tiny_clip
    enc = CoOpTextEncoder(model, tokenizer, n_ctx=4)
    with torch.no_grad():  # the context set to the embeddings of "a photo of a" = CLIP on the full sentence
        enc.ctx.copy_(model.token_embedding(tokenizer(["a photo of a"])[0, 1:5]))
    names = ["red circle", "blue star"]
    want = F.normalize(model.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
    torch.testing.assert_close(enc(names), want, rtol=0, atol=1e-5)
    assert CoOpTextEncoder(model, tokenizer).ctx.shape == (16, model.positional_embedding.shape[1])
    with pytest.raises(ValueError, match="too long"):
        CoOpTextEncoder(model, tokenizer, n_ctx=20)(["a very long class name of many words"])
    none = NoObjectEmbedding(8)
    torch.testing.assert_close(none.append(torch.zeros(2, 8))[2], F.normalize(none.embedding[0], dim=0))


def test_ldvc_backbone_with_patch_severance():
    from detectron2.modeling import build_backbone

    from ldvc_d2.config import validate_config
    from tests.conftest import tiny_cfg

    images = torch.randn(1, 3, 32, 32)
    outs = {}
    for alpha in (0.0, 1.0):
        # no prepended prompts: a severed block runs on [CLS] + patches only (α = 1 never sees them anyway)
        cfg = tiny_cfg("configs/shapes/ldvc_gps.yaml", "MODEL.CLIP.PATCH_SEVERANCE_ALPHA", f"[{alpha}]",
                       "MODEL.CLIP.VISUAL_PROMPTS", "0")
        torch.manual_seed(0)
        backbone = build_backbone(cfg).eval()
        assert [h.layer for h in backbone.severance] == [-1]
        outs[alpha] = backbone(images)["dense"]
        backbone.severance = []
        outs["plain"] = backbone(images)["dense"]
    torch.testing.assert_close(outs[0.0], outs["plain"], rtol=0, atol=1e-5)  # same weights (seed 0), α = 0
    assert not torch.allclose(outs[1.0], outs["plain"], atol=1e-3)
    bad = tiny_cfg("configs/shapes/ldvc_gps.yaml", "MODEL.CLIP.PATCH_SEVERANCE_ALPHA", "[1.0, 0.5]",
                   "MODEL.DEOP.GPS_MODE", "soft")
    with pytest.raises(ValueError, match="PATCH_SEVERANCE_ALPHA has 2 values for 1 layers.*GPS_MODE"):
        validate_config(bad, training=False)
