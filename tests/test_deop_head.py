"""DeOP's CAL head (D6-D8), semantic output (D9), loss (D10) and proposal sources, against loops."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling.deop import (
    ClassificationAnchorLearning, class_logits, cluster_proposals, combine_proposals, deop_loss, gt_proposals,
    heatmap_pool, released_loss, sine_positions,
)


def test_heatmap_pool_against_a_loop():
    torch.manual_seed(0)
    b, n, l, d, heads = 2, 3, 5, 8, 2
    q, k, v = torch.randn(b, n, d), torch.randn(b, l, d), torch.randn(b, l, d)
    m = torch.rand(b, n, l)
    want = torch.zeros(b, n, d)
    dh = d // heads
    for i in range(b):
        for j in range(n):
            for h in range(heads):
                sl = slice(h * dh, (h + 1) * dh)
                logits = torch.stack([(q[i, j, sl] * k[i, t, sl]).sum() / math.sqrt(dh) for t in range(l)])
                heat = torch.softmax(logits, dim=0) * m[i, j]  # softmax × mask, not renormalised
                want[i, j, sl] = sum(heat[t] * v[i, t, sl] for t in range(l))
            want[i, j] = want[i, j] / want[i, j].norm()
    torch.testing.assert_close(heatmap_pool(q, k, v, m, heads), want, rtol=0, atol=1e-6)


def test_sine_positions_against_the_formula():
    h, w, dim = 3, 4, 8
    pos = sine_positions(h, w, dim)
    half = dim // 2
    for r in range(h):
        for c in range(w):
            for axis, t in ((0, (r + 1) / h * 2 * math.pi), (1, (c + 1) / w * 2 * math.pi)):
                for i in range(half):
                    arg = t / 10000 ** (2 * (i // 2) / half)
                    want = math.sin(arg) if i % 2 == 0 else math.cos(arg)
                    assert abs(float(pos[r * w + c, axis * half + i]) - want) < 1e-5


def _sine(h, w, dim):
    """DETR's normalised 2-D sine positions, element by element: row r·w+c = [y part; x part]."""
    half, out = dim // 2, torch.zeros(h * w, dim)
    for r in range(h):
        for c in range(w):
            for axis, t in ((0, (r + 1) / h * 2 * math.pi), (1, (c + 1) / w * 2 * math.pi)):
                for i in range(half):
                    arg = t / 10000 ** (2 * (i // 2) / half)
                    out[r * w + c, axis * half + i] = math.sin(arg) if i % 2 == 0 else math.cos(arg)
    return out


def _mha(attn, query, key, value, heads):
    """nn.MultiheadAttention from its raw weights: per-head softmax(q k^T / sqrt(d_h)) v, concat, out_proj."""
    d = query.shape[-1]
    dh = d // heads
    wq, wk, wv = attn.in_proj_weight.split(d)
    bq, bk, bv = attn.in_proj_bias.split(d)
    q, k, v = query @ wq.T + bq, key @ wk.T + bk, value @ wv.T + bv
    out = torch.cat([torch.softmax(q[..., h * dh:(h + 1) * dh] @ k[..., h * dh:(h + 1) * dh].transpose(-1, -2)
                                   / math.sqrt(dh), dim=-1) @ v[..., h * dh:(h + 1) * dh] for h in range(heads)], -1)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def _ln(norm, x):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _reference_cal(cal, feats, masks, heads, heat_heads, heat_dropout=0.0):
    """CAL written out (D6, D7): zero queries + Q_pos; post-norm DETR layers (self-attn on q+Q_pos with value q,
    cross-attn q+Q_pos -> F_V+S with value F_V, FFN), then the heat layer (self-attn + LN) and per heat head
    h: dropout(softmax(W_q(q+Q_pos)_h · W_k(F_V+S)_h / sqrt(d_h))) · mask pooling F_V's channel slice h; L2 norm."""
    b, d, hh, ww = feats.shape
    mem = feats.flatten(2).transpose(1, 2)
    pos = _sine(hh, ww, d)[None]
    qpos = cal.query_pos.weight[None].expand(b, -1, -1)
    q = torch.zeros_like(qpos)
    for layer in cal.layers:
        q = _ln(layer.norm1, q + _mha(layer.self_attn, q + qpos, q + qpos, q, heads))
        q = _ln(layer.norm2, q + _mha(layer.cross_attn, q + qpos, mem + pos, mem, heads))
        ffn = layer.ffn
        q = _ln(layer.norm3, q + (torch.relu(q @ ffn[0].weight.T + ffn[0].bias) @ ffn[3].weight.T + ffn[3].bias))
    q = _ln(cal.out_self.norm1, q + _mha(cal.out_self.self_attn, q + qpos, q + qpos, q, heads))
    qq = (q + qpos) @ cal.heat_q.weight.T + cal.heat_q.bias
    kk = (mem + pos) @ cal.heat_k.weight.T + cal.heat_k.bias
    dh = d // heat_heads
    weights = torch.stack([torch.softmax(qq[..., h * dh:(h + 1) * dh] @ kk[..., h * dh:(h + 1) * dh].transpose(-1, -2)
                                         / math.sqrt(dh), dim=-1) for h in range(heat_heads)], 1)  # B×H×N×L
    weights = F.dropout(weights, heat_dropout, training=heat_dropout > 0)
    out = torch.cat([(weights[:, h] * masks) @ mem[..., h * dh:(h + 1) * dh] for h in range(heat_heads)], -1)
    return out / out.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("heat_heads", [0, 1])  # 0: the released 8-head pooling (= CAL_HEADS); 1: paper eq. 3
def test_cal_forward_against_a_written_out_implementation(heat_heads):
    torch.manual_seed(0)
    cal = ClassificationAnchorLearning(16, num_queries=4, num_layers=2, heads=2, ffn=32, dropout=0.0,
                                       heat_dropout=0.3, heatmap_heads=heat_heads).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine and biases
        for name, p in cal.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_()
    feats = F.normalize(torch.randn(2, 16, 3, 3), dim=1)
    masks = torch.rand(2, 4, 9)  # σ(M̃) on the 3×3 grid of F_V, flattened
    with torch.no_grad():
        out = cal(feats, masks)  # eval: no heat dropout
        want = _reference_cal(cal, feats, masks, heads=2, heat_heads=heat_heads or 2)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
        cal.train()  # training: dropout 0.3 on the B×H×N×L heat weights, the same random draw
        torch.manual_seed(7)
        dropped = cal(feats, masks)
        torch.manual_seed(7)
        want_dropped = _reference_cal(cal, feats, masks, heads=2, heat_heads=heat_heads or 2, heat_dropout=0.3)
    torch.testing.assert_close(dropped, want_dropped, rtol=0, atol=1e-5)
    assert (dropped - out).abs().max() > 1e-3
    text = F.normalize(torch.randn(5, 16), dim=-1)
    torch.testing.assert_close(class_logits(out, text, 100.0), 100 * torch.einsum("bnd,cd->bnc", out, text))
    with pytest.raises(ValueError, match="NUM_PROPOSALS"):
        cal(feats, torch.rand(2, 3, 9))
    with pytest.raises(ValueError, match="3×3 feature grid"):
        cal(feats, torch.rand(2, 4, 12, 12))  # mask logits at their own size: the caller resizes them


def direct_scores(logits, masks, size):
    """S′_c(x) = Σ_n softmax(ℓ_n)_c σ(M_n↑(x)), by a loop over proposals."""
    up = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).sigmoid()
    out = torch.zeros(logits.shape[0], logits.shape[2], *size)
    for n in range(logits.shape[1]):
        out += logits[:, n].softmax(-1)[:, :, None, None] * up[:, n:n + 1]
    return out


def test_semantic_output_d9():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 4, 6), torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(combine_proposals(logits, masks, (10, 10)), direct_scores(logits, masks, (10, 10)))


def test_released_loss_d10_against_direct_formulas():
    torch.manual_seed(0)
    b, c1, h, w = 2, 4, 3, 5  # 3 classes + no-object
    scores = torch.rand(b, c1, h, w) * 2
    targets = torch.randint(0, 3, (b, h, w))
    targets[0, 0, :2] = 255
    targets[1, 2, 4] = 255
    p = torch.sigmoid(3 * scores - 3)
    focal, dice = 0.0, 0.0
    for i in range(b):
        num = den_p = den_y = 0.0
        for c in range(c1):
            for y_ in range(h):
                for x_ in range(w):
                    t = int(targets[i, y_, x_])
                    yv = 1.0 if (t == c or (t == 255 and c == c1 - 1)) else 0.0  # ignore -> no-object
                    pt = min(max(float(p[i, c, y_, x_]) if yv else 1 - float(p[i, c, y_, x_]), 1e-4), 1 - 1e-4)
                    focal += -(0.25 if yv else 0.75) * (1 - pt) ** 2 * math.log(pt)
                    if c < 2:  # num_dice = 2 channels
                        num += float(p[i, c, y_, x_]) * yv
                        den_p += float(p[i, c, y_, x_])
                        den_y += yv
        dice += 1 - (2 * num + 1) / (den_p + den_y + 1)
    terms = released_loss(scores, targets, ignore_label=255, output_sig=3.0, num_dice=2)
    assert abs(float(terms["loss_focal"]) - focal / (b * c1 * h * w)) < 1e-6
    assert abs(float(terms["loss_dice"]) - dice / b) < 1e-6
    weighted = deop_loss(scores, targets, kind="released", weights=(2.0, 0.8), ignore_label=255, output_sig=3.0,
                         num_dice=2)
    torch.testing.assert_close(weighted["loss_focal"], 2.0 * terms["loss_focal"])
    torch.testing.assert_close(weighted["loss_dice"], 0.8 * terms["loss_dice"])
    paper = deop_loss(scores, targets, kind="paper", weights=(1.0, 1.0), ignore_label=255, output_sig=3.0)
    assert set(paper) == {"loss_focal", "loss_dice"} and all(torch.isfinite(v) for v in paper.values())


def test_gt_and_cluster_proposals():
    labels = torch.tensor([[[0, 0, 3], [255, 3, 3]]])
    props = gt_proposals(labels, num=3, logit=10.0, ignore_label=255)
    want = torch.tensor([[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]], [[0, 0, 0], [0, 0, 0]]]) * 20.0 - 10.0
    torch.testing.assert_close(props[0], want)
    assert gt_proposals(labels, num=1, logit=10.0, ignore_label=255).shape == (1, 1, 2, 3)
    # two blocks of patches that correlate only among themselves -> two regions
    grid = (4, 4)
    left = torch.tensor([c < 2 for r in range(4) for c in range(4)])
    corr = torch.zeros(1, 17, 17)
    corr[0, 1:, 1:] = (left[:, None] == left[None, :]).float()
    out = cluster_proposals(corr, grid, (8, 8), num=4, logit=5.0, eps=0.5, min_samples=2, scale="fixed",
                            median_size=1)
    inside = (out[0] > 0).float()
    assert inside[:2].sum() == 64 and inside[2:].sum() == 0  # two masks covering the image, two empty slots
    assert torch.equal(inside[0][:, :4], inside[0][:, :1].expand(8, 4)) and inside[0, 0, 0] != inside[0, 0, 7]
