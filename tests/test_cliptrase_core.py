"""CLIPtrase pieces (SEED_SYSTEMS §2.1 T1-T10) against independent re-computations."""
import collections
import math

import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling.clip import PromptedVisionEncoder
from ldvc_d2.modeling.cliptrase import (
    SelfCorrelationAttention, cliptrase_hooks, cluster_maps, cluster_patches, collapse_background, dbscan_parameters,
    denoise_correlation, patch_logits, refine_with_regions, region_map, self_correlation, vote_hard, vote_soft,
)


def qkv_from_in_proj(block, x):
    """q, k, v (B×H×N×d_h) with plain matmuls on in_proj_weight rows, one head at a time."""
    attn = block.attn
    d, h = attn.embed_dim, attn.num_heads
    dh = d // h
    z = block.ln_1(x)
    out = []
    for j in range(3):
        heads = []
        for i in range(h):
            rows = slice(j * d + i * dh, j * d + (i + 1) * dh)
            heads.append(z @ attn.in_proj_weight[rows].T + attn.in_proj_bias[rows])
        out.append(torch.stack(heads, dim=1))
    return out


def cosine_matrix(a):
    """a: N×d -> N×N cosine similarities, element by element from norms."""
    norms = a.pow(2).sum(-1).sqrt()
    return (a @ a.T) / (norms[:, None] * norms[None, :])


def test_self_correlation_against_in_proj_recomputation(tiny_clip):
    enc = PromptedVisionEncoder(tiny_clip[0].visual, num_prompts=0, intermediate_layers=[]).eval()
    block = enc.visual.transformer.resblocks[2]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 32, 40), hooks=cliptrase_hooks())
        handle.remove()
        q, k, v = qkv_from_in_proj(block, seen["x"])
    r = out["correlation"]
    assert r.shape == (2, 1 + 20, 1 + 20)
    for b in range(2):
        want = sum(cosine_matrix(a[b, i]) for a in (q, k, v) for i in range(4)) / 12
        torch.testing.assert_close(r[b], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(r, r.transpose(1, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.diagonal(r, dim1=1, dim2=2), torch.ones(2, 21), rtol=0, atol=1e-5)
    assert r.abs().max() <= 1 + 1e-5
    qk = self_correlation(q, k, v, ["q", "k"])
    want_qk = sum(cosine_matrix(a[0, i]) for a in (q, k) for i in range(4)) / 8
    torch.testing.assert_close(qk[0], want_qk, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip", ["tiny_clip", "vit_b16"])
def test_last_block_output_against_a_hand_recomputation(clip, request):
    """(T2) The modified last block, written out: z = ln_1(x); per head A = Σ_{a∈q,k,v} softmax(d_h^-½ a aᵀ);
    x' = x + out_proj(concat_h A_h v_h); x_out = x' + mlp(ln_2(x')); dense / global = normalize(ln_post(x_out) proj)."""
    model, _ = request.getfixturevalue(clip)
    enc = PromptedVisionEncoder(model.visual, num_prompts=0, intermediate_layers=[]).eval()
    block = enc.visual.transformer.resblocks[-1]
    seen = {}
    # the block's input x, as its first LayerNorm receives it (a replaced block does not run block.forward)
    handle = block.ln_1.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    patch = enc.patch_size
    torch.manual_seed(1)
    images = torch.randn(2, 3, 3 * patch, 4 * patch)
    with torch.no_grad():
        out = enc(images, hooks=cliptrase_hooks())
        handle.remove()
        x = seen["x"]
        assert x.shape[:2] == (2, 1 + 12)
        q, k, v = qkv_from_in_proj(block, x)  # B×H×N×d_h
        dh = q.shape[-1]
        heads = []
        for i in range(q.shape[1]):
            a = sum(torch.softmax(t[:, i] @ t[:, i].transpose(1, 2) / math.sqrt(dh), dim=-1) for t in (q, k, v))
            heads.append(a @ v[:, i])
        attn = block.attn
        x1 = x + torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
        x2 = x1 + block.mlp(block.ln_2(x1))
        feats = enc.visual.ln_post(x2) @ enc.visual.proj
    width = feats.shape[-1]
    want_dense = F.normalize(feats[:, 1:], dim=-1).transpose(1, 2).reshape(2, width, 3, 4)
    torch.testing.assert_close(out["dense"], want_dense, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["global"], F.normalize(feats[:, 0], dim=-1), rtol=0, atol=1e-5)


def test_qk_attention_is_sclip_csa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 16).unbind(0)
    got = SelfCorrelationAttention(["q", "k"])(q, k, v)
    for b in range(2):
        for h in range(4):
            attn = F.softmax(q[b, h] @ q[b, h].T * 16 ** -0.5, dim=1) + F.softmax(k[b, h] @ k[b, h].T / 4.0, dim=1)
            torch.testing.assert_close(got[b, h], attn @ v[b, h], rtol=0, atol=1e-5)


@pytest.mark.parametrize("branches", [["q"], ["q", "k"], ["q", "k", "v"]])
def test_attention_rows_sum_to_branch_count(branches):
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    rows = SelfCorrelationAttention(branches).weights(q, k, v).sum(-1)
    torch.testing.assert_close(rows, torch.full_like(rows, float(len(branches))))


def test_bad_branches():
    with pytest.raises(ValueError, match="distinct entries"):
        SelfCorrelationAttention(["q", "q"])
    with pytest.raises(ValueError, match="distinct entries"):
        cliptrase_hooks(correlation_branches=["x"])


def test_denoise_subtracts_cls_row():
    r = torch.rand(5, 5) * 2 - 1
    w = denoise_correlation(r)
    for i in range(4):
        for j in range(4):
            assert w[i, j] == max(0.0, float(r[i + 1, j + 1] - r[0, j + 1]))


def planted_weights(groups, dim=None, noise=0.02, seed=0):
    """Rows of one group share a centre: block-structured W with noise."""
    g = torch.Generator().manual_seed(seed)
    n = sum(groups)
    centres = torch.rand(len(groups), dim or n, generator=g)
    labels = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(groups))
    return centres[labels] + noise * torch.rand(n, dim or n, generator=g), labels


def naive_dbscan(x, eps, m):
    """O(n²) DBSCAN: clusters numbered by smallest core index, border -> lowest adjacent cluster."""
    near = torch.cdist(x.double(), x.double()) <= eps
    core = near.sum(1) >= m
    labels = [-1] * len(x)
    cluster = 0
    for s in range(len(x)):
        if core[s] and labels[s] == -1:
            stack = [s]
            labels[s] = cluster
            while stack:
                i = stack.pop()
                for j in near[i].nonzero().flatten().tolist():
                    if labels[j] == -1:
                        labels[j] = cluster
                        if core[j]:
                            stack.append(j)
            cluster += 1
    return torch.tensor(labels)


def test_dbscan_recovers_planted_blocks_and_matches_naive():
    w, truth = planted_weights([7, 5, 9])
    labels = cluster_patches(w, eps=0.3, min_samples=3)
    assert torch.equal(labels, truth)  # numbered by first member, no noise
    torch.manual_seed(4)
    x = torch.rand(60, 5)
    for eps, m in ((0.3, 3), (0.45, 5), (0.2, 2)):
        assert torch.equal(cluster_patches(x, eps, m), naive_dbscan(x, eps, m))


def test_dbscan_scaling_rule():
    assert dbscan_parameters(0.7, 3, 441, "fixed") == (0.7, 3)
    assert dbscan_parameters(0.7, 3, 196, "grid") == (0.7, 3)
    eps, m = dbscan_parameters(0.7, 3, 441, "grid")  # 21×21 grid: the official 336 px pair is 1.1/7
    assert math.isclose(eps, 1.05) and m == 7
    eps, m = dbscan_parameters(0.7, 3, 256, "grid")  # shapes world 16×16
    assert math.isclose(eps, 0.7 * 16 / 14) and m == 4
    with pytest.raises(ValueError, match="DBSCAN_SCALE"):
        dbscan_parameters(0.7, 3, 196, "sqrt")


def test_regions_follow_planted_clusters():
    h, w = 6, 8
    truth = (torch.arange(w)[None, :] >= 3).long().expand(h, w).flatten()  # left 3 columns vs the rest
    weights = torch.stack([(truth == t).float() for t in truth])  # W_ij = 1 iff same side
    labels = cluster_patches(weights, eps=0.5, min_samples=2)
    maps = cluster_maps(weights, labels, (h, w))
    for k in range(2):
        torch.testing.assert_close(maps[k].flatten(), weights[labels == k].mean(0))
    regions = region_map(weights, labels, (h, w), (24, 32))
    want = (torch.arange(32)[None, :] >= 12).long().expand(24, 32)
    assert (regions == want).float().mean() > 0.95


def test_votes():
    torch.manual_seed(5)
    regions = torch.randint(0, 4, (10, 12))
    pred = torch.randint(0, 5, (10, 12))
    logits = torch.randn(6, 10, 12)
    hard, soft = vote_hard(pred, regions), vote_soft(logits, regions)
    for r in range(4):
        mask = regions == r
        counts = collections.Counter(pred[mask].tolist())
        mode = min(c for c in counts if counts[c] == max(counts.values()))
        assert (hard[mask] == mode).all()
        torch.testing.assert_close(soft[:, mask], logits[:, mask].mean(1, keepdim=True).expand(-1, int(mask.sum())))
    tie = vote_hard(torch.tensor([[4, 4, 1, 1, 2]]), torch.zeros(1, 5, dtype=torch.long))
    assert (tie == 1).all()  # a tie goes to the smallest class, as torch.unique + argmax in the official code


def test_background_collapse_and_pipeline():
    assert torch.equal(collapse_background(torch.tensor([0, 2, 3, 5, 7]), 3), torch.tensor([0, 2, 3, 3, 3]))
    h = w = 4
    truth = (torch.arange(w)[None, :] >= 2).long().expand(h, w).flatten()
    weights = torch.stack([(truth == t).float() for t in truth])
    logits = torch.zeros(5, 16, 16)  # classes 0, 1, 2 and two background words 3, 4
    logits[1, :, :8] = 1.0
    logits[4, :, 8:] = 1.0
    logits[0, 0:3, 0:3] = 2.0  # a small blob the left region outvotes
    logits[3, 0:3, 12:] = 2.0  # a blob of another background word: still background
    for vote in ("hard", "soft"):
        out = refine_with_regions(logits, weights, (h, w), eps=0.5, min_samples=2, vote=vote, num_classes=3)
        assert out.regions is not None
        assert (out.pred[:, :6] == 1).all() and (out.pred[:, 10:] == 3).all() and out.pred.max() == 3
    fallback = refine_with_regions(logits, weights, (h, w), eps=0.5, min_samples=100, num_classes=3)
    assert fallback.regions is None
    assert torch.equal(fallback.pred, collapse_background(logits.argmax(0), 3))


def test_patch_logits_and_image_level_reweight():
    torch.manual_seed(6)
    dense = F.normalize(torch.randn(8, 3, 2), dim=0)
    text = F.normalize(torch.randn(4, 8), dim=1)
    cls = F.normalize(torch.randn(8), dim=0)
    got = patch_logits(dense, text, 100.0, (6, 4))
    want = F.interpolate((100.0 * text @ dense.reshape(8, -1)).reshape(1, 4, 3, 2), size=(6, 4), mode="bilinear")[0]
    torch.testing.assert_close(got, want)
    weighted = patch_logits(dense, text, 100.0, (6, 4), global_feat=cls)
    torch.testing.assert_close(weighted, want * (100.0 * (text * cls).sum(1))[:, None, None], rtol=1e-5, atol=1e-3)
