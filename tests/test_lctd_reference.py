"""LCTD blocks and head (LDVC eqs. 3-7, 13) against a reference written with functional ops only.

Every LayerNorm and every eq. (4) skip conv is randomised first (at init the five norms of a block are
identical and the skip is zero, so a swapped norm or an ignored V_j would not show), and the reference
reads the parameters by name and composes ``F.layer_norm``, ``F.linear``, ``F.gelu`` and a hand-written
multi-head attention; it never calls the block's modules. LCSA is taken with ``topk=None`` (global
self-attention, eq. 12's 1/sqrt(d) scale); its routing has its own tests (tests/test_lcsa.py).
"""
import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling import LCTDBlock, LCTDHead

D, WIDTH, HEADS, GH, GW = 16, 12, 2, 4, 6


def _randomise(module: torch.nn.Module) -> None:
    """Distinct random values for every LayerNorm and skip conv (and nonzero biases everywhere)."""
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.normal_(m.weight, 1.0, 0.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.5)
    for name, p in module.named_parameters():
        if "skip" in name or name.endswith("bias"):
            torch.nn.init.normal_(p, 0.0, 0.3)


def _mha(q_in, kv_in, w_in, b_in, w_out, b_out, heads, scale):
    """softmax(q k^T · scale) v per head, then the output projection; q/k/v weights packed as [q; k; v]."""
    d = q_in.shape[-1]
    wq, wk, wv = w_in[:d], w_in[d:2 * d], w_in[2 * d:]
    bq, bk, bv = b_in[:d], b_in[d:2 * d], b_in[2 * d:]
    q, k, v = q_in @ wq.T + bq, kv_in @ wk.T + bk, kv_in @ wv.T + bv
    hd = d // heads
    out = torch.zeros_like(q)
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        attn = torch.softmax(q[..., s] @ k[..., s].transpose(-1, -2) * scale, dim=-1)
        out[..., s] = attn @ v[..., s]
    return out @ w_out.T + b_out


def _ln(x, p, name):
    return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)


def reference_block(p, v, v_j, text, heads=HEADS):
    """Eqs. (4)-(7) with parameters ``p`` (a state dict): v B×L×d, v_j B×width×h×w, text B×C×d."""
    d = v.shape[-1]
    x = v + torch.einsum("bchw,oc->bhwo", v_j, p["skip.weight"][:, :, 0, 0]).flatten(1, 2) + p["skip.bias"]  # (4)
    n = _ln(x, p, "norm_sa")
    x = x + _mha(n, n, p["self_attn.qkv.weight"], p["self_attn.qkv.bias"], p["self_attn.proj.weight"],
                 p["self_attn.proj.bias"], heads, d ** -0.5)  # (5), eq. (12)'s 1/sqrt(d)
    kv = _ln(text, p, "norm_kv")
    x = x + _mha(_ln(x, p, "norm_q"), kv, p["cross_attn.in_proj_weight"], p["cross_attn.in_proj_bias"],
                 p["cross_attn.out_proj.weight"], p["cross_attn.out_proj.bias"], heads, (d // heads) ** -0.5)  # (6)
    hidden = F.gelu(_ln(x, p, "norm_mlp") @ p["mlp.0.weight"].T + p["mlp.0.bias"])
    return x + hidden @ p["mlp.3.weight"].T + p["mlp.3.bias"]  # (7)


def _block():
    return LCTDBlock(D, WIDTH, num_heads=HEADS, window_size=2, topk=None, mlp_ratio=2.0, dropout=0.0).eval()


def test_the_five_layernorms_are_distinct_after_randomising():
    torch.manual_seed(0)
    block = _block()
    _randomise(block)
    norms = [block.norm_sa, block.norm_q, block.norm_kv, block.norm_mlp]
    for i in range(len(norms)):
        for j in range(i + 1, len(norms)):
            assert (norms[i].weight - norms[j].weight).abs().max() > 0.1


@pytest.mark.parametrize("seed", [0, 1])
def test_block_matches_the_functional_reference(seed):
    torch.manual_seed(seed)
    block = _block()
    _randomise(block)
    v, v_j, text = torch.randn(2, GH * GW, D), torch.randn(2, WIDTH, GH, GW), torch.randn(2, 5, D)
    with torch.no_grad():
        torch.testing.assert_close(block(v, v_j, text), reference_block(block.state_dict(), v, v_j, text),
                                   atol=1e-5, rtol=1e-5)


def test_head_gives_each_block_its_own_v_j_and_text_adapter_output():
    torch.manual_seed(2)
    head = LCTDHead(dim=D, intermediate_dim=WIDTH, num_blocks=3, num_heads=HEADS, window_size=2, topk=None,
                    mlp_ratio=2.0).eval()
    _randomise(head)
    feats = {"dense": F.normalize(torch.randn(2, D, GH, GW), dim=1), "global": torch.randn(2, D),
             "intermediate": [torch.randn(2, WIDTH, GH, GW) * (k + 1) for k in range(3)]}
    text = torch.randn(5, D)
    with torch.no_grad():
        logits = head(feats, text)
        w, b = head.text_adapter.proj.weight, head.text_adapter.proj.bias
        g = feats["global"][:, None]  # (3): T_new = Linear([T ⊙ V_g ; T])
        t_new = (text[None] * g) @ w[:, :D].T + text[None].expand(2, -1, -1) @ w[:, D:].T + b
        v = feats["dense"].permute(0, 2, 3, 1).reshape(2, GH * GW, D)
        for k in range(3):
            v = reference_block(head.blocks[k].state_dict(), v, feats["intermediate"][k], t_new)
        ref = (t_new @ v.transpose(1, 2)).reshape(2, 5, GH, GW)  # (13)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
