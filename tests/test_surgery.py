"""CLIP surgery (SEED_SYSTEMS §1.1): q/k/v of a block, replaced attention, vision-tower hooks."""
import copy

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

from ldvc_d2.modeling.clip import BlockHook, PromptedVisionEncoder, block_qkv, run_block_with_attention
from ldvc_d2.modeling.clip.vision import run_block


def softmax_attention(q, k, v):
    """Plain scaled dot-product attention, written independently of nn.MultiheadAttention."""
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def manual_qkv(block, x):
    """q, k, v from in_proj_weight slices with explicit per-head reshapes: B×H×N×d_h each."""
    attn = block.attn
    d, h = attn.embed_dim, attn.num_heads
    z = block.ln_1(x)
    out = []
    for j in range(3):
        t = z @ attn.in_proj_weight[j * d:(j + 1) * d].T + attn.in_proj_bias[j * d:(j + 1) * d]
        out.append(torch.stack([t[..., i * (d // h):(i + 1) * (d // h)] for i in range(h)], dim=1))
    return out


def with_random_biases(block):
    """A copy of ``block`` whose biases and LayerNorm scales are random (open_clip initialises them to 0/1)."""
    block = copy.deepcopy(block)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
            elif name.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    return block


@pytest.mark.parametrize("model", ["vit_b16", "tiny_clip"])
@pytest.mark.parametrize("extra_tokens", [0, 5])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])  # fp32: a few ulp at |x|≈10
def test_decomposed_attention_reproduces_every_block(request, model, extra_tokens, dtype, atol):
    clip_model, _ = request.getfixturevalue(model)
    torch.manual_seed(1)
    width = clip_model.visual.conv1.out_channels
    x = torch.randn(2, extra_tokens + 1 + 4, width, dtype=dtype)  # [prompts; CLS; 2×2 patches]
    for i, block in enumerate(clip_model.visual.transformer.resblocks):
        block = with_random_biases(block).to(dtype)
        q, k, v = block_qkv(block, x)
        for got, want in zip((q, k, v), manual_qkv(block, x)):
            torch.testing.assert_close(got, want, rtol=0, atol=atol)
        expected = run_block(block, x, batch_first=True)
        got = run_block_with_attention(block, x, softmax_attention)
        torch.testing.assert_close(got, expected, rtol=0, atol=atol, msg=f"block {i}")
        x = expected


def test_decomposition_with_sequence_first_block():
    torch.manual_seed(2)
    block = with_random_biases(ResidualAttentionBlock(64, 4, batch_first=False).eval()).double()
    x = torch.randn(3, 7, 64, dtype=torch.float64)
    torch.testing.assert_close(
        run_block_with_attention(block, x, softmax_attention), run_block(block, x, batch_first=False),
        rtol=0, atol=1e-6,
    )


def test_custom_block_is_a_clear_error(tiny_clip):
    block = CustomResidualAttentionBlock(64, 4)
    with pytest.raises(NotImplementedError, match="CustomResidualAttentionBlock"):
        block_qkv(block, torch.randn(1, 3, 64))
    with pytest.raises(NotImplementedError, match="CustomResidualAttentionBlock"):
        run_block_with_attention(block, torch.randn(1, 3, 64), softmax_attention)


def _encoder(tiny_clip, prompts):
    torch.manual_seed(3)
    return PromptedVisionEncoder(tiny_clip[0].visual, num_prompts=prompts, intermediate_layers=[1, 3]).eval()


def _reference_forward(enc, images):
    """The encoder's hook-free forward written out again: stem, prompted blocks, ln_post @ proj."""
    v, n = enc.visual, enc.num_prompts
    x = v.conv1(images)
    b, _, h, w = x.shape
    x = torch.cat([v.class_embedding.expand(b, 1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = v.ln_pre(x + enc.positional_embedding(h, w))
    inter = []
    for i, block in enumerate(v.transformer.resblocks):
        if n:
            x = torch.cat([enc.prompts[i].expand(b, -1, -1), x], 1)
        x = block(x)[:, n:]
        if i in enc.intermediate_layers:
            inter.append(x[:, 1:].transpose(1, 2).reshape(b, enc.width, h, w))
    x = v.ln_post(x) @ v.proj
    return F.normalize(x[:, 1:], dim=-1).transpose(1, 2).reshape(b, -1, h, w), F.normalize(x[:, 0], dim=-1), inter


@pytest.mark.parametrize("prompts", [0, 3])
def test_no_hooks_is_bit_identical(tiny_clip, prompts):
    enc = _encoder(tiny_clip, prompts)
    images = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        dense, glob, inter = _reference_forward(enc, images)
        for hooks in (None, []):
            out = enc(images, hooks=hooks)
            assert torch.equal(out["dense"], dense) and torch.equal(out["global"], glob)
            assert all(torch.equal(a, b) for a, b in zip(out["intermediate"], inter))
            assert set(out) == {"dense", "global", "intermediate"}


@pytest.mark.parametrize("prompts", [0, 3])
def test_tap_reads_cls_and_patch_qkv_and_changes_nothing(tiny_clip, prompts):
    enc = _encoder(tiny_clip, prompts)
    images = torch.randn(2, 3, 32, 32)
    block = enc.visual.transformer.resblocks[2]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        plain = enc(images)
        handle.remove()
        out = enc(images, hooks=[BlockHook(layer=-2, tap=lambda q, k, v: torch.stack([q, k, v]), name="qkv")])
    want = torch.stack(manual_qkv(block, seen["x"]))[:, :, :, prompts:]  # prompts excluded
    assert out["qkv"].shape == (3, 2, 4, 1 + 16, 32)
    torch.testing.assert_close(out["qkv"], want, rtol=0, atol=1e-6)
    assert torch.equal(out["dense"], plain["dense"]) and torch.equal(out["global"], plain["global"])


@pytest.mark.parametrize("prompts", [0, 3])
def test_replaced_attention_leaves_prompts_out(tiny_clip, prompts):
    enc = _encoder(tiny_clip, prompts)
    images = torch.randn(1, 3, 32, 24)
    last = enc.visual.transformer.resblocks[-1]
    seen = {}
    handle = last.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        enc(images)
        handle.remove()
        out = enc(images, hooks=[BlockHook(layer=3, attn_fn=softmax_attention)], return_tokens=True)
        want = enc.visual.ln_post(last(seen["x"][:, prompts:])) @ enc.visual.proj
    torch.testing.assert_close(out["tokens"], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["global"], F.normalize(want[:, 0], dim=-1), rtol=0, atol=1e-5)
    if prompts == 0:  # without prompts the replaced block equals the plain one
        torch.testing.assert_close(out["dense"], enc(images)["dense"], rtol=0, atol=1e-5)


def test_hook_errors(tiny_clip):
    enc = _encoder(tiny_clip, 0)
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="layer 4 does not exist"):
        enc(images, hooks=[BlockHook(layer=4, attn_fn=softmax_attention)])
    with pytest.raises(ValueError, match="Two BlockHooks"):
        twice = [BlockHook(layer=-1, attn_fn=softmax_attention), BlockHook(layer=3, attn_fn=softmax_attention)]
        enc(images, hooks=twice)
    with pytest.raises(ValueError, match="clashes"):
        enc(images, hooks=[BlockHook(layer=0, tap=lambda q, k, v: q, name="dense")])
    with pytest.raises(ValueError, match="needs a name"):
        BlockHook(layer=0, tap=lambda q, k, v: q)
    custom = _encoder(tiny_clip, 0)
    original = custom.visual.transformer.resblocks[1]
    custom.visual.transformer.resblocks[1] = CustomResidualAttentionBlock(128, 4)
    try:
        with pytest.raises(NotImplementedError, match="VisionTransformer block 1.*CustomResidualAttentionBlock"):
            custom(images, hooks=[BlockHook(layer=1, attn_fn=softmax_attention)])
    finally:
        custom.visual.transformer.resblocks[1] = original
