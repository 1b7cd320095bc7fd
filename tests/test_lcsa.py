"""LCSA (eqs. 8-12) against plain attention and a slow per-window reference, with the softmax scale
written out independently: 1/sqrt(d) of the full width (eq. 12, "full_width") or 1/sqrt(d/heads)."""
import math

import pytest
import torch

from ldvc_d2.modeling.ldvc.lcsa import LocalConsensusSelfAttention


def _expected_scale(d, heads, scale):
    return 1 / math.sqrt(d) if scale == "full_width" else 1 / math.sqrt(d / heads)


def _plain_attention(module, x, scale="full_width"):
    """Multi-head softmax attention written out by hand from the module's weights."""
    b, l, d = x.shape
    hds = module.num_heads
    q, k, v = module.qkv(x).chunk(3, dim=-1)
    q, k, v = (t.view(b, l, hds, d // hds).transpose(1, 2) for t in (q, k, v))
    attn = (q @ k.transpose(-1, -2) * _expected_scale(d, hds, scale)).softmax(-1)
    return module.proj((attn @ v).transpose(1, 2).reshape(b, l, d))


def _per_window_reference(module, x, h, w):
    """Loops over windows: route by pooled-feature similarity, attend to the routed windows' tokens."""
    n, m = module.window_size, module.topk
    b, _, d = x.shape
    hds = module.num_heads
    q, k, v = module.qkv(x).chunk(3, dim=-1)
    grid = x.view(b, h, w, d)
    out = torch.zeros(b, h, w, d)
    coords = [(r, c) for r in range(h // n) for c in range(w // n)]
    for bi in range(b):
        pooled = torch.stack([grid[bi, r * n:(r + 1) * n, c * n:(c + 1) * n].mean((0, 1)) for r, c in coords])
        sim = pooled @ pooled.T
        for wi, (r, c) in enumerate(coords):
            chosen = sim[wi].topk(m).indices.tolist()
            rows = [(rr * n + i) * w + cc * n + j for (rr, cc) in (coords[t] for t in chosen)
                    for i in range(n) for j in range(n)]
            own = [(r * n + i) * w + c * n + j for i in range(n) for j in range(n)]
            for head in range(hds):
                sl = slice(head * d // hds, (head + 1) * d // hds)
                qq, kk, vv = q[bi, own, sl], k[bi, rows, sl], v[bi, rows, sl]
                o = (qq @ kk.T / math.sqrt(d)).softmax(-1) @ vv  # eq. (12): the full width d
                for t, idx in enumerate(own):
                    out[bi, idx // w, idx % w, sl] = o[t]
    return module.proj(out.view(b, h * w, d))


@pytest.mark.parametrize("scale", ["full_width", "head_dim"])
@pytest.mark.parametrize("heads", [1, 4])
def test_all_windows_equals_plain_self_attention(heads, scale):
    torch.manual_seed(0)
    h, w, n = 8, 12, 4
    lcsa = LocalConsensusSelfAttention(32, num_heads=heads, window_size=n, topk=(h // n) * (w // n), scale=scale)
    x = torch.randn(2, h * w, 32)
    torch.testing.assert_close(lcsa(x, h, w), _plain_attention(lcsa, x, scale), atol=1e-5, rtol=1e-5)
    lcsa.topk = None  # the "global" ablation runs the same weights without routing
    torch.testing.assert_close(lcsa(x, h, w), _plain_attention(lcsa, x, scale), atol=1e-5, rtol=1e-5)


def test_scale_reaches_the_softmax():
    """Same weights, two scales: with 4 heads the outputs differ (head_dim is 2x sharper here), each
    matching its own recomputation; with one head both scales are the same number."""
    torch.manual_seed(3)
    x = torch.randn(1, 64, 16)
    full = LocalConsensusSelfAttention(16, num_heads=4, window_size=2, topk=4, scale="full_width")
    head = LocalConsensusSelfAttention(16, num_heads=4, window_size=2, topk=4, scale="head_dim")
    head.load_state_dict(full.state_dict())
    with torch.no_grad():
        assert (full(x, 8, 8) - head(x, 8, 8)).abs().max() > 1e-3
        full.topk = head.topk = None
        torch.testing.assert_close(full(x, 8, 8), _plain_attention(full, x, "full_width"), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head(x, 8, 8), _plain_attention(full, x, "head_dim"), atol=1e-5, rtol=1e-5)
    assert full.scale == pytest.approx(1 / 4) and head.scale == pytest.approx(1 / 2)
    one = [LocalConsensusSelfAttention(16, num_heads=1, window_size=2, topk=4, scale=s)
           for s in ("full_width", "head_dim")]
    assert one[0].scale == one[1].scale
    with pytest.raises(ValueError, match=r"MODEL.LDVC.LCTD.SCALE must be one of \['full_width', 'head_dim'\], got"):
        LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=1, scale="sqrt_d")


def test_attention_dropout_only_in_training():
    torch.manual_seed(4)
    x = torch.randn(1, 16, 16)
    lcsa = LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=2, attn_dropout=0.5)
    plain = LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=2)
    plain.load_state_dict(lcsa.state_dict())
    lcsa.eval()
    with torch.no_grad():
        torch.testing.assert_close(lcsa(x, 4, 4), plain(x, 4, 4))
        lcsa.train()
        assert (lcsa(x, 4, 4) - plain(x, 4, 4)).abs().max() > 1e-3


@pytest.mark.parametrize("topk", [1, 3])
def test_routed_attention_matches_per_window_reference(topk):
    torch.manual_seed(1)
    h, w = 8, 8
    lcsa = LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=topk)
    x = torch.randn(2, h * w, 16)
    with torch.no_grad():
        torch.testing.assert_close(lcsa(x, h, w), _per_window_reference(lcsa, x, h, w), atol=1e-5, rtol=1e-5)
        assert (lcsa(x, h, w) - _plain_attention(lcsa, x)).abs().max() > 1e-3


def test_grid_not_divisible_by_window_is_a_clear_error():
    lcsa = LocalConsensusSelfAttention(16, num_heads=2, window_size=4, topk=2)
    with pytest.raises(ValueError, match="6x8 feature grid is not divisible by MODEL.LDVC.LCTD.WINDOW_SIZE=4"):
        lcsa(torch.randn(1, 48, 16), 6, 8)


def test_topk_above_window_count_falls_back_to_all_windows(caplog):
    torch.manual_seed(2)
    lcsa = LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=16)
    x = torch.randn(1, 16, 16)
    with caplog.at_level("WARNING"):
        out = lcsa(x, 4, 4)
    assert "TOPK_WINDOWS=16 > 4 windows" in caplog.text
    torch.testing.assert_close(out, _plain_attention(lcsa, x), atol=1e-5, rtol=1e-5)
