"""ZegCLIP baseline: its decoder against a hand computation, its parameter count against the official
module shapes, its prompt variant, and the DDP setting its never-called weights need."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.modeling.zegclip import ZegCLIPHead
from tests.conftest import tiny_cfg


def official_trainable_count(num_prompts: int, width=768, layers=12, d=512, dec_layers=3, mlp=2048) -> int:
    """ZegCLIP's trainable parameters, summed from the shapes of its official modules (VPTCLIPVisionTransformer
    with exclude_key='prompt', ATMSingleHeadSeg with use_proj=False), written out independently of our code."""
    prompts = num_prompts * width + (layers - 1) * num_prompts * width  # prompt_embeddings + deep_prompt_embeddings
    prompt_proj, prompt_norm = width * width + width, 2 * width
    torch_self_attn = 3 * d * d + 3 * d + d * d + d  # nn.MultiheadAttention in/out projections
    cross_attn = 4 * (d * d + d)  # q, k, v, proj
    ffn = d * mlp + mlp + mlp * d + d
    norms = 3 * 2 * d  # norm1 (unused), norm2, norm3
    q_proj = 2 * d * d + d
    return prompts + prompt_proj + prompt_norm + dec_layers * (torch_self_attn + cross_attn + ffn + norms) + q_proj


@pytest.mark.parametrize("config,num_prompts,paper", [("configs/zegclip/voc.yaml", 10, 13.8),
                                                     ("configs/zegclip/coco_stuff.yaml", 100, 14.6)])
def test_trainable_parameters_match_official_count(config, num_prompts, paper):
    model = build_model(tiny_cfg(config, "MODEL.CLIP.MODEL", "ViT-B-16"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == official_trainable_count(num_prompts)
    assert abs(trainable / 1e6 - paper) < 0.1


def test_without_unused_self_attention_the_count_drops_by_it():
    kw = dict(dim=64, num_layers=3, num_heads=4, mlp_dim=128)
    full = sum(p.numel() for p in ZegCLIPHead(**kw, unused_self_attention=True).parameters())
    lean = sum(p.numel() for p in ZegCLIPHead(**kw, unused_self_attention=False).parameters())
    assert full - lean == 3 * (4 * 64 * 64 + 4 * 64 + 2 * 64)


def _reference(head: ZegCLIPHead, dense, glob, text):
    """The decoder written out with plain tensor operations from the head's weights."""
    b, d, h, w = dense.shape
    mem = dense.flatten(2).transpose(1, 2)
    t = text.expand(b, -1, -1)
    q = torch.cat([t * glob[:, None], t], -1) @ head.relationship.proj.weight.T + head.relationship.proj.bias
    maps = []
    for layer in head.layers:
        ca = layer.cross_attn
        nh, hd = ca.num_heads, d // ca.num_heads
        split = lambda x: x.reshape(b, -1, nh, hd).permute(0, 2, 1, 3)  # noqa: E731
        qq, kk, vv = split(F.linear(q, ca.q.weight, ca.q.bias)), split(F.linear(mem, ca.k.weight, ca.k.bias)), \
            split(F.linear(mem, ca.v.weight, ca.v.bias))
        logits = torch.einsum("bhcx,bhlx->bhcl", qq, kk) / hd ** 0.5
        out = torch.einsum("bhcl,bhlx->bchx", logits.softmax(-1), vv).reshape(b, -1, d)
        q = F.layer_norm(q + F.linear(out, ca.proj.weight, ca.proj.bias), (d,), layer.norm2.weight, layer.norm2.bias)
        ff = F.linear(torch.relu(F.linear(q, layer.linear1.weight, layer.linear1.bias)), layer.linear2.weight, layer.linear2.bias)
        q = F.layer_norm(q + ff, (d,), layer.norm3.weight, layer.norm3.bias)
        maps.append(logits.mean(1).reshape(b, -1, h, w))
    return maps


def test_decoder_matches_hand_computation():
    torch.manual_seed(0)
    head = ZegCLIPHead(dim=32, num_layers=3, num_heads=4, mlp_dim=64).eval()
    for p in head.parameters():  # move away from the init (zero biases, unit norms) so every term counts
        p.data.add_(0.1 * torch.randn_like(p))
    dense, glob, text = torch.randn(2, 32, 3, 5), torch.randn(2, 32), torch.randn(7, 32)
    logits, maps = head({"dense": dense, "global": glob, "intermediate": []}, text, return_attention=True)
    expected = _reference(head, dense, glob, text)
    assert logits.shape == (2, 7, 3, 5) and len(maps) == 3
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, expected[-1])
    assert torch.equal(head({"dense": dense, "global": glob, "intermediate": []}, text), logits)


def test_which_weights_get_gradients():
    """The never-called self-attention/norm1, and everything of the last layer after its attention
    logits (values, output projection, norms, feed-forward), get no gradient: as in ZegCLIP."""
    torch.manual_seed(0)
    head = ZegCLIPHead(dim=32, num_layers=2, num_heads=4, mlp_dim=64)
    out = head({"dense": torch.randn(1, 32, 4, 4), "global": torch.randn(1, 32)}, torch.randn(3, 32))
    out.sum().backward()
    after_logits = ("cross_attn.v.", "cross_attn.proj.", "norm2.", "norm3.", "linear1.", "linear2.")
    for name, p in head.named_parameters():
        unused = ".self_attn." in name or ".norm1." in name or (
            name.startswith("layers.1.") and any(k in name for k in after_logits))
        assert (p.grad is None) == unused, name
        if not unused:
            assert p.grad.abs().sum() > 0, name


def test_zegclip_prompt_variant_in_the_backbone():
    cfg = tiny_cfg("configs/shapes/zegclip.yaml")
    model = build_model(cfg).eval()
    enc = model.backbone.visual
    assert enc.prompt_proj is not None and enc.prompt_norm is not None and enc.prompt_dropout.p == 0.1
    assert model.backbone.text.num_prompts == 0
    # an identity projection and a LayerNorm without bias give the plain deep-prompt encoder's output
    # (ln_post(LN(x)) = ln_post(x) up to eps): build the plain one with the same prompts and compare
    plain = build_model(tiny_cfg("configs/shapes/ldvc.yaml")).eval().backbone.visual
    plain.visual.load_state_dict(enc.visual.state_dict())
    plain.prompts.data.copy_(enc.prompts.data)
    with torch.no_grad():
        enc.prompt_proj.weight.copy_(torch.eye(enc.width))
        enc.prompt_proj.bias.zero_()
    images = torch.randn(2, 3, 64, 64)
    a, b = enc(images), plain(images)
    torch.testing.assert_close(a["dense"], b["dense"], atol=1e-4, rtol=1e-4)
    # the projection and the norm are used: changing either changes the output
    with torch.no_grad():
        enc.prompt_proj.weight.normal_()
    assert not torch.allclose(enc(images)["dense"], a["dense"], atol=1e-3)
    with torch.no_grad():
        enc.prompt_proj.weight.copy_(torch.eye(enc.width))
        enc.prompt_norm.bias.normal_()
    assert not torch.allclose(enc(images)["dense"], a["dense"], atol=1e-3)
    # prompt projection and norm train, in the "prompts" optimizer role
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"backbone.visual.prompt_proj.weight", "backbone.visual.prompt_norm.weight"} <= names
