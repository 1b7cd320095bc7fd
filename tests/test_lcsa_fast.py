"""The chunked LCSA against the batched-gather formula (all windows' K and V gathered at once): same outputs and gradients
to 1e-5 for any chunk size, and a backward pass that sees the same attention-dropout masks as its forward
(the chunks are recomputed there)."""
import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling.ldvc.lcsa import LocalConsensusSelfAttention


def _gather_reference(module, x, h, w):
    """Eqs. (8)-(12) in one batch: gather the m routed windows' K and V for every window at once."""
    n, m, heads = module.window_size, module.topk, module.num_heads
    b, l, d = x.shape
    q, k, v = module.qkv(x).chunk(3, dim=-1)

    def windows(t):  # B×L×c -> B×W×n²×c
        return t.view(b, h // n, n, w // n, n, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, (h // n) * (w // n), n * n, -1)

    pooled = windows(x).mean(2)
    ids = (pooled @ pooled.transpose(1, 2)).topk(m, dim=-1).indices
    batch = torch.arange(b)[:, None, None]
    ks, vs = windows(k)[batch, ids].flatten(2, 3), windows(v)[batch, ids].flatten(2, 3)

    def split(t):
        return t.view(*t.shape[:3], heads, d // heads).transpose(2, 3)

    attn = (split(windows(q)) @ split(ks).transpose(-1, -2) * module.scale).softmax(-1)
    out = (attn @ split(vs)).transpose(2, 3).reshape(b, -1, n, n, d)
    out = out.view(b, h // n, w // n, n, n, d).permute(0, 1, 3, 2, 4, 5).reshape(b, l, d)
    return module.proj(out)


@pytest.mark.parametrize("chunk_elements", [1, 3000, 2 ** 20])  # 1: per-head passes; others: window path
@pytest.mark.parametrize("scale", ["full_width", "head_dim"])
def test_outputs_and_gradients_match_the_gather_formula(chunk_elements, scale):
    torch.manual_seed(0)
    h, w = 8, 12
    lcsa = LocalConsensusSelfAttention(32, num_heads=4, window_size=2, topk=5, scale=scale,
                                       chunk_elements=chunk_elements)
    x = torch.randn(2, h * w, 32, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(lcsa(x, h, w), _gather_reference(lcsa, x, h, w), atol=1e-5, rtol=1e-5)
    weights = torch.randn(2, h * w, 32)
    grads = []
    for fn in (lcsa, lambda *a: _gather_reference(lcsa, *a)):
        lcsa.zero_grad()
        x.grad = None
        (fn(x, h, w) * weights).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in lcsa.parameters()])
    for new, ref in zip(*grads):
        torch.testing.assert_close(new, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_elements", [1, 64])  # per-head passes / window path
def test_backward_uses_the_forward_dropout_masks(chunk_elements):
    """With attention dropout the chunks are recomputed in the backward pass; their gradient must be the
    derivative of the function the forward pass computed (same masks), checked by central differences."""
    torch.manual_seed(1)
    lcsa = LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=2, attn_dropout=0.5,
                                       chunk_elements=chunk_elements).double().train()
    x = torch.randn(1, 16, 16, dtype=torch.float64, requires_grad=True)
    weights, direction = torch.randn(1, 16, 16, dtype=torch.float64), torch.randn(1, 16, 16, dtype=torch.float64)

    def f(inp):
        torch.manual_seed(7)
        return (lcsa(inp, 4, 4) * weights).sum()

    f(x).backward()
    eps = 1e-6
    with torch.no_grad():
        numeric = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    assert abs((x.grad * direction).sum().item() - numeric.item()) < 1e-6 * max(1.0, abs(numeric.item()))
    with torch.no_grad():  # the masks really act: another seed gives another output
        torch.manual_seed(8)
        assert (lcsa(x, 4, 4) * weights).sum().item() != pytest.approx(f(x).item(), abs=1e-6)


def test_attention_does_the_routed_fraction_of_the_work():
    """Counts the score products of eq. (12): m·n² keys per query, not all h·w tokens."""
    torch.manual_seed(2)
    h = w = 8
    lcsa = LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=3, chunk_elements=512)
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape[-2], k.shape[-2], q.shape[:-2].numel()))  # window-heads in this call
        return original(q, k, v, **kw)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            lcsa(torch.randn(1, h * w, 16), h, w)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert len(seen) > 1 and {(q, k) for q, k, _ in seen} == {(4, 3 * 4)}
    assert sum(c for *_, c in seen) == (h // 2) * (w // 2) * lcsa.num_heads  # each window once per head


def _tensor_peak(fn):
    from ldvc_d2.utils.speed import tensor_peak_mib

    fn()  # warm-up: parameter gradients exist before the measured call
    peak = tensor_peak_mib(fn, torch.device("cpu"))
    if peak is None:
        pytest.skip("this torch's profiler has no memory timeline")
    return peak


def test_routed_step_holds_one_head_not_all_of_them():
    """Inference and training of the routed step hold the output, one head's Q, K, V and a chunk,
    not Q, K and V of all heads (tensor bytes from the profiler's allocation timeline, deterministic)."""
    torch.manual_seed(5)
    grid, d = 32, 64
    x = torch.randn(2, grid * grid, d)
    peaks = {}
    for name, topk in (("global", None), ("routed", 4)):
        # chunk_elements just under h·w·d / 4: the per-head passes (the window path takes grids up to 4 chunks)
        layer = LocalConsensusSelfAttention(d, num_heads=4, window_size=2, topk=topk, chunk_elements=16000)
        xg = x.clone().requires_grad_()

        def inference():
            with torch.no_grad():
                layer(x, grid, grid)

        peaks[name] = (_tensor_peak(inference), _tensor_peak(lambda: layer(xg, grid, grid).sum().backward()))
    # measured here: routed / global 0.49 (inference) and 0.39 (training); the all-heads formula 0.58 / 0.67
    assert peaks["routed"][0] < 0.55 * peaks["global"][0]
    assert peaks["routed"][1] < 0.55 * peaks["global"][1]


@pytest.mark.parametrize("train", [False, True])
def test_routed_step_under_bf16_autocast(train):
    """Under CPU bf16 autocast the routed step runs in bf16 (as autocast's linear layers and global
    attention do) and stays within bf16 rounding of fp32; gradients too."""
    torch.manual_seed(6)
    lcsa = LocalConsensusSelfAttention(32, num_heads=4, window_size=2, topk=3, chunk_elements=3000)
    x = torch.randn(2, 64, 32, requires_grad=True)
    ref = lcsa(x, 8, 8)
    grads_ref = torch.autograd.grad((ref * ref).sum(), [x, *lcsa.parameters()]) if train else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lcsa(x, 8, 8) if train else lcsa(x.detach(), 8, 8)
        glob = LocalConsensusSelfAttention(32, num_heads=4, window_size=2, topk=None)(x.detach(), 8, 8)
    assert out.dtype == glob.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.detach(), atol=3e-2, rtol=3e-2)
    if train:
        grads = torch.autograd.grad((out.float() * out.float()).sum(), [x, *lcsa.parameters()])
        for g, r in zip(grads, grads_ref):
            assert g.dtype == r.dtype == torch.float32
            assert (g - r).norm() <= 3e-2 * r.norm() + 1e-3


def test_frozen_weights_and_float64_under_autocast():
    """Gradients only for what needs them (frozen projections get none, the input's is still right), and
    autocast leaves a float64 layer in float64 as it does its linear layers."""
    torch.manual_seed(7)
    lcsa = LocalConsensusSelfAttention(32, num_heads=4, window_size=2, topk=3, chunk_elements=3000)
    x = torch.randn(2, 64, 32, requires_grad=True)
    ref = torch.autograd.grad(_gather_reference(lcsa, x, 8, 8).square().sum(), x)[0]
    lcsa.qkv.requires_grad_(False)
    lcsa(x, 8, 8).square().sum().backward()
    assert lcsa.qkv.weight.grad is None and lcsa.proj.weight.grad is not None
    torch.testing.assert_close(x.grad, ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lcsa.double()(x.detach().double(), 8, 8).dtype == torch.float64


def test_attention_dropout_must_be_below_one():
    with pytest.raises(ValueError, match="MODEL.LDVC.LCTD.ATTN_DROPOUT"):
        LocalConsensusSelfAttention(16, num_heads=2, window_size=2, topk=2, attn_dropout=1.0)


def test_small_grids_take_the_window_path_and_tracing_the_per_head_passes(monkeypatch):
    """Eager inference and training on a small grid run the all-heads window path (lcsa_windows.py), equal
    to the per-window reference; ONNX tracing (fixed graph, any batch) and large grids keep the per-head
    passes (lcsa_routed.py)."""
    from ldvc_d2.modeling.ldvc import lcsa as lcsa_module
    from ldvc_d2.modeling.ldvc import lcsa_routed

    calls = []
    for module, name in ((lcsa_module, "window_attention"), (lcsa_routed, "_passes"),
                         (lcsa_routed, "_RoutedAttention")):
        original = getattr(module, name)
        spy = (lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
        if name == "_RoutedAttention":
            spy = type("Spy", (), {"apply": staticmethod(lambda *a, _f=original, _n=name: calls.append(_n) or _f.apply(*a))})
        monkeypatch.setattr(module, name, spy)
    torch.manual_seed(9)
    h, w = 8, 12
    x = torch.randn(3, h * w, 32)
    small = LocalConsensusSelfAttention(32, num_heads=4, window_size=2, topk=5, chunk_elements=3000).eval()
    xg = x.clone().requires_grad_()
    small(xg, h, w).sum().backward()
    assert calls == ["window_attention"]
    calls.clear()
    with torch.no_grad():
        out = small(x, h, w)
        assert calls == ["window_attention"]
        torch.testing.assert_close(out, _gather_reference(small, x, h, w), atol=1e-5, rtol=1e-5)
        calls.clear()

        class Grid(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layer = small

            def forward(self, t):
                return self.layer(t, h, w)

        traced = torch.jit.trace(Grid(), x, check_trace=False)
        assert calls == ["_passes"]
        torch.testing.assert_close(traced(x), out, atol=1e-5, rtol=1e-5)
        calls.clear()
        small.chunk_elements = 64  # h·w·d > 4 chunks: a large grid for this layer
        torch.testing.assert_close(small(x, h, w), out, atol=1e-5, rtol=1e-5)
        assert calls == ["_passes"]
    calls.clear()
    small(xg, h, w).sum().backward()
    assert calls == ["_RoutedAttention", "_passes"]
