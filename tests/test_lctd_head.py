"""Text adapter (eq. 3), LCTD block (eqs. 4-7) and logits (eq. 13) against hand-written compositions."""
import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling import LCTDBlock, LCTDHead, TextAdapter
from tests.conftest import tiny_cfg


def test_text_adapter_is_linear_over_modulated_and_plain_text():
    torch.manual_seed(0)
    adapter = TextAdapter(8)
    text, g = torch.randn(5, 8), torch.randn(3, 8)
    out = adapter(text, g)
    assert out.shape == (3, 5, 8)
    W, bias = adapter.proj.weight, adapter.proj.bias
    for b in range(3):
        for c in range(5):
            ref = W[:, :8] @ (text[c] * g[b]) + W[:, 8:] @ text[c] + bias
            torch.testing.assert_close(out[b, c], ref, atol=1e-6, rtol=1e-6)


def _attention(q_in, kv_in, in_proj_w, in_proj_b, out_w, out_b, heads, scale=None):
    """Multi-head attention by hand; ``scale`` None = 1/sqrt(d/heads) (torch's MultiheadAttention)."""
    d = q_in.shape[-1]
    wq, wk, wv = in_proj_w.chunk(3)
    bq, bk, bv = in_proj_b.chunk(3)
    q, k, v = F.linear(q_in, wq, bq), F.linear(kv_in, wk, bk), F.linear(kv_in, wv, bv)
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scale = (d // heads) ** -0.5 if scale is None else scale
    attn = (split(q) @ split(k).transpose(-1, -2) * scale).softmax(-1)
    return F.linear((attn @ split(v)).transpose(1, 2).reshape(q_in.shape), out_w, out_b)


def test_lctd_block_follows_equations_4_to_7():
    torch.manual_seed(0)
    d, width, heads, h, w = 16, 12, 2, 4, 4
    block = LCTDBlock(d, width, num_heads=heads, window_size=2, topk=None, mlp_ratio=2.0, dropout=0.0)
    torch.nn.init.normal_(block.skip.weight)  # zero-initialised by design; make eq. (4) visible
    v, v_j, text = torch.randn(2, h * w, d), torch.randn(2, width, h, w), torch.randn(2, 5, d)
    with torch.no_grad():
        x = v + F.conv2d(v_j, block.skip.weight, block.skip.bias).flatten(2).transpose(1, 2)  # (4)
        sa = block.self_attn
        n = block.norm_sa(x)
        sa_out = _attention(n, n, sa.qkv.weight, sa.qkv.bias, sa.proj.weight, sa.proj.bias, heads, d ** -0.5)
        x = x + sa_out  # (5), with eq. (12)'s 1/sqrt(d)
        ca = block.cross_attn
        kv = block.norm_kv(text)
        x = x + _attention(block.norm_q(x), kv, ca.in_proj_weight, ca.in_proj_bias, ca.out_proj.weight,
                           ca.out_proj.bias, heads)  # (6)
        ref = x + block.mlp(block.norm_mlp(x))  # (7)
        torch.testing.assert_close(block(v, v_j, text), ref, atol=1e-5, rtol=1e-5)


def test_zero_initialised_skip_starts_from_the_dense_feature():
    block = LCTDBlock(16, 12, num_heads=2, window_size=2, topk=None, mlp_ratio=2.0, dropout=0.0)
    v, text = torch.randn(1, 16, 16), torch.randn(1, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(v, torch.randn(1, 12, 4, 4), text), block(v, torch.zeros(1, 12, 4, 4), text))


def test_head_logits_are_text_times_decoded_features():
    torch.manual_seed(0)
    head = LCTDHead(dim=16, intermediate_dim=12, num_blocks=2, num_heads=2, window_size=2, topk=2)
    feats = {"dense": F.normalize(torch.randn(2, 16, 4, 4), dim=1), "global": torch.randn(2, 16),
             "intermediate": [torch.randn(2, 12, 4, 4) for _ in range(2)]}
    text = torch.randn(5, 16)
    logits = head(feats, text)
    assert logits.shape == (2, 5, 4, 4)
    t_new = head.text_adapter(text, feats["global"])
    v = feats["dense"].flatten(2).transpose(1, 2)
    for block, v_j in zip(head.blocks, feats["intermediate"]):
        v = block(v, v_j, t_new)
    for b in range(2):
        torch.testing.assert_close(logits[b].flatten(1), t_new[b] @ v[b].T, atol=1e-5, rtol=1e-5)  # (13)
    with pytest.raises(ValueError, match="2 blocks but the backbone returned 1"):
        head({**feats, "intermediate": feats["intermediate"][:1]}, text)


def test_head_config_switches():
    cfg = tiny_cfg("configs/demo.yaml", "MODEL.LDVC.LCTD.NUM_BLOCKS", "3", "MODEL.LDVC.LCTD.SELF_ATTENTION", "global",
                   "MODEL.LDVC.LCTD.TEXT_ADAPTER", "False")
    from detectron2.layers import ShapeSpec

    shapes = {"dense": ShapeSpec(channels=16), "intermediate": ShapeSpec(channels=12)}
    head = LCTDHead(cfg, shapes)
    assert len(head.blocks) == 3 and head.text_adapter is None
    assert all(b.self_attn.topk is None for b in head.blocks)
    cfg.MODEL.LDVC.LCTD.SELF_ATTENTION = "windows"
    with pytest.raises(ValueError, match="SELF_ATTENTION must be 'lcsa' or 'global'"):
        LCTDHead(cfg, shapes)


def test_trunc_normal_init_as_zegclips_decoder():
    """WEIGHT_INIT "trunc_normal": every Linear of the head (text adapter, LCSA, cross-attention's packed
    q/k/v and output, MLP) ~ N(0, 0.02²) cut at ±2, biases 0; the eq. (4) Conv1x1 stays zero."""
    torch.manual_seed(0)
    head = LCTDHead(dim=64, intermediate_dim=48, num_blocks=2, num_heads=4, window_size=2, topk=2,
                    weight_init="trunc_normal")
    block = head.blocks[0]
    weights = [head.text_adapter.proj.weight, block.self_attn.qkv.weight, block.self_attn.proj.weight,
               block.cross_attn.in_proj_weight, block.cross_attn.out_proj.weight, block.mlp[0].weight,
               block.mlp[3].weight]
    for w in weights:
        assert abs(w.std().item() - 0.02) < 0.003 and w.abs().max() <= 2.0
    biases = [head.text_adapter.proj.bias, block.self_attn.qkv.bias, block.cross_attn.in_proj_bias, block.mlp[0].bias]
    assert all(torch.count_nonzero(b) == 0 for b in biases)
    assert torch.count_nonzero(block.skip.weight) == 0
    torch.manual_seed(0)
    plain = LCTDHead(dim=64, intermediate_dim=48, num_blocks=2, num_heads=4, window_size=2, topk=2, weight_init="torch")
    assert plain.blocks[0].self_attn.qkv.weight.std() > 0.05  # PyTorch's kaiming-uniform: std 1/sqrt(3*64)
    with pytest.raises(ValueError, match="MODEL.LDVC.LCTD.WEIGHT_INIT must be 'trunc_normal' or 'torch'"):
        LCTDHead(dim=16, intermediate_dim=8, num_blocks=1, num_heads=2, window_size=2, topk=1, weight_init="xavier")


def test_dropout_sits_on_every_branch_and_only_in_training():
    """DROPOUT on the LCSA, cross-attention and MLP outputs, ATTN_DROPOUT on both softmaxes: in eval mode
    the block equals a dropout-free copy; in training each dropout alone changes the output."""
    torch.manual_seed(0)
    kw = dict(num_heads=2, window_size=2, topk=None, mlp_ratio=2.0)
    ref = LCTDBlock(16, 12, dropout=0.0, **kw)
    torch.nn.init.normal_(ref.skip.weight)
    v, v_j, text = torch.randn(2, 16, 16), torch.randn(2, 12, 4, 4), torch.randn(2, 5, 16)
    for dropout, attn_dropout in ((0.5, 0.0), (0.0, 0.5)):
        block = LCTDBlock(16, 12, dropout=dropout, attn_dropout=attn_dropout, **kw)
        block.load_state_dict(ref.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(block.eval()(v, v_j, text), ref(v, v_j, text))
            torch.manual_seed(1)
            assert (block.train()(v, v_j, text) - ref(v, v_j, text)).abs().max() > 1e-3
    block = LCTDBlock(16, 12, dropout=0.3, attn_dropout=0.2, **kw)
    assert block.cross_drop.p == 0.3 and block.self_attn.proj_drop.p == 0.3 and block.mlp[2].p == 0.3
    assert block.cross_attn.dropout == 0.2 and block.self_attn.attn_dropout == 0.2
