"""C2S pieces against independent computations: prototypes, InfoNCE with the [CLS] bank, mining,
variable-class logits and losses, masked crops, students (seed 003; SEED_SYSTEMS §3.5)."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling.c2s import (
    CLSBank, LatentDecoder, build_student, class_logits, cosine_kmeans, global_prototype, info_nce, mask_boxes,
    merge_clusters, mine_latent_classes, pixel_loss, pseudo_mask, region_prototypes, window_seeds,
)
from ldvc_d2.modeling.c2s.latent import PAD_LOGIT
from ldvc_d2.modeling.c2s.mining import average_linkage


def test_global_prototype_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    feats, cls = torch.randn(2, 8, 3, 5, generator=g), torch.randn(2, 8, generator=g)
    valid = torch.rand(2, 3, 5, generator=g) > 0.3
    got = global_prototype(feats, cls, valid)
    for b in range(2):
        pixels = [(i, j) for i in range(3) for j in range(5) if valid[b, i, j]]
        scores = torch.tensor([float(cls[b] @ feats[b, :, i, j]) / math.sqrt(8) for i, j in pixels])
        w = scores.exp() / scores.exp().sum()
        expected = sum(w[n] * feats[b, :, i, j] for n, (i, j) in enumerate(pixels))
        torch.testing.assert_close(got[b], expected, rtol=1e-5, atol=1e-5)


def test_region_prototypes_match_a_loop():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 4, 6, 6, generator=g)
    labels = torch.randint(-1, 4, (2, 6, 6), generator=g)
    regions = [(b, l) for b in range(2) for l in range(4) if (labels[b] == l).any()]
    got = region_prototypes(feats, labels, torch.tensor([r[0] for r in regions]), torch.tensor([r[1] for r in regions]))
    for row, (b, l) in enumerate(regions):
        pixels = [feats[b, :, i, j] for i in range(6) for j in range(6) if labels[b, i, j] == l]
        torch.testing.assert_close(got[row], torch.stack(pixels).mean(0), rtol=1e-5, atol=1e-6)


def _direct_info_nce(q, keys, pos, tau):
    """−log(exp(cos(q, k+)/τ) / Σ_j exp(cos(q, k_j)/τ)), averaged, one query at a time."""
    total = 0.0
    for i in range(len(q)):
        sims = [float(F.cosine_similarity(q[i], k, dim=0)) / tau for k in keys]
        total += -(sims[pos[i]] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(q)


def test_info_nce_with_the_fifo_bank_matches_the_direct_formula():
    g = torch.Generator().manual_seed(2)
    bank, fifo = CLSBank(5, 4), []  # fifo: an independent list, newest first
    for step in range(4):
        current = torch.randn(2, 4, generator=g)
        candidates = bank.push(current)
        fifo = [*current, *fifo][:5]
        expected_candidates = [*current, *fifo[2:]] if step else list(current)
        torch.testing.assert_close(candidates, torch.stack(expected_candidates[:5]))
        torch.testing.assert_close(bank.tokens[: int(bank.count)], torch.stack(fifo))
        protos = torch.randn(2, 4, generator=g)
        loss = info_nce(protos, candidates, torch.arange(2), 0.07)
        assert loss.item() == pytest.approx(_direct_info_nce(protos, list(candidates), [0, 1], 0.07), rel=1e-5)
    assert int(bank.count) == 5
    big = bank.push(torch.randn(7, 4, generator=g))  # more current tokens than the bank holds: all are candidates
    assert big.shape == (7, 4) and int(bank.count) == 5


def test_window_seeds_drop_windows_without_unannotated_tokens():
    g = torch.Generator().manual_seed(3)
    dense = torch.randn(6, 8, 8, generator=g)
    unannotated = torch.zeros(8, 8, dtype=torch.bool)
    unannotated[5:, 6:] = True  # a corner; most windows see only seen tokens
    seeds = window_seeds(dense, unannotated, [2, 4, 9])
    expected = []
    for o in (2, 4):  # 9 > grid: skipped
        s = max(1, int(o / 2 + 0.5))
        for i in range(0, 8 - o + 1, s):
            for j in range(0, 8 - o + 1, s):
                window = unannotated[i:i + o, j:j + o]
                if window.any():
                    expected.append((dense[:, i:i + o, j:j + o] * window).sum((1, 2)) / o**2)
    torch.testing.assert_close(seeds, torch.stack(expected))
    assert window_seeds(dense, torch.zeros(8, 8, dtype=torch.bool), [2]).shape == (0, 6)


def _planted(seed=4, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    region = torch.zeros(12, 12, dtype=torch.long)  # 0: seen; 1-3: planted latent blocks
    region[:6, 6:], region[6:, :6], region[6:, 6:] = 1, 2, 3
    dense = dirs[region].permute(2, 0, 1) + noise * torch.randn(16, 12, 12, generator=g)
    return F.normalize(dense, dim=0), region


def test_mining_recovers_planted_clusters():
    dense, region = _planted()
    latent = mine_latent_classes(dense, region > 0, window_sizes=[2, 4], iters=10, threshold=0.9, min_tokens=4,
                                 max_classes=8)
    assert (latent[region == 0] == -1).all()
    ids = [set(latent[region == r].tolist()) for r in (1, 2, 3)]
    assert all(len(s) == 1 and -1 not in s for s in ids) and len(set.union(*ids)) == 3
    assert sorted(set.union(*ids)) == [0, 1, 2]
    capped = mine_latent_classes(dense, region > 0, window_sizes=[2, 4], iters=10, threshold=0.9, min_tokens=4,
                                 max_classes=2)
    assert set(capped.unique().tolist()) == {-1, 0, 1}
    assert torch.equal(latent, mine_latent_classes(dense, region > 0, window_sizes=[2, 4], iters=10, threshold=0.9,
                                                   min_tokens=4, max_classes=8))  # deterministic


def test_merge_threshold_is_monotonic_and_kmeans_converges_to_the_planted_centres():
    dense, region = _planted(noise=0.3)
    points = dense[:, region > 0].T
    assign, centroids, counts = cosine_kmeans(points, window_seeds(dense, region > 0, [2]), 10)
    assert counts.sum() == len(points) and torch.equal(assign, (F.normalize(points, dim=1) @ centroids.T).argmax(1))
    groups = [len(torch.unique(merge_clusters(centroids, counts, t)[counts > 0])) for t in (-1.0, 0.5, 0.9, 0.99, 1.1)]
    assert groups == sorted(groups) and groups[0] == 1 and groups[-1] == int((counts > 0).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_mining_finds_the_hidden_classes_of_correlated_clip_like_tokens(seed):
    """Tokens with cosine ~0.86 within and ~0.80 between classes (as CLIP's): the config's default rule
    (average linkage on centred tokens, θ 0.1) finds the 4 hidden classes; the single-linkage rule on raw
    tokens at 0.9 is recorded for the next test."""
    from detectron2.config import get_cfg

    from ldvc_d2 import add_ldvc_config
    from ldvc_d2.modeling.c2s.synthetic import correlated_tokens

    cfg = get_cfg()
    add_ldvc_config(cfg)
    c = cfg.MODEL.C2S
    dense, labels, hidden = correlated_tokens(seed, shared=0.8, own=0.05)
    t = F.normalize(dense.flatten(1), dim=0).T
    same = labels.flatten()[:, None] == labels.flatten()[None]
    cos = t @ t.T
    assert cos[~same].mean() > 0.78 and cos[same].mean() < 0.88  # the anisotropy this test is about
    kwargs = {"window_sizes": list(c.WINDOW_SIZES), "iters": c.KMEANS_ITERS, "min_tokens": c.MIN_CLUSTER,
              "max_classes": c.MAX_LATENT}
    latent = mine_latent_classes(dense, hidden, threshold=c.MERGE_THRESHOLD, linkage=c.MERGE_LINKAGE,
                                 center=c.CENTER_TOKENS, **kwargs)
    pred, truth = latent[hidden], labels[hidden]
    assert (latent[~hidden] == -1).all()
    assert sorted(pred.unique().tolist()) == [0, 1, 2, 3]  # 4 kept clusters
    purity = sum(int(torch.bincount(truth[pred == j]).max()) for j in range(4)) / int((pred >= 0).sum())
    assert purity >= 0.95 and (pred >= 0).float().mean() >= 0.9
    assert {int(torch.bincount(truth[pred == j]).argmax()) for j in range(4)} == {0, 1, 2, 3}


def test_single_linkage_on_raw_tokens_chains_classes_of_correlated_tokens():
    """The rule the default replaced (connected components of centroid cosine > 0.9, raw tokens) merges
    different hidden classes of the same tokens (seeds 0-3)."""
    from ldvc_d2.modeling.c2s.synthetic import correlated_tokens

    clusters, purity = [], []
    for seed in range(4):
        dense, labels, hidden = correlated_tokens(seed, shared=0.8, own=0.05)
        old = mine_latent_classes(dense, hidden, window_sizes=[2, 4, 8], iters=10, threshold=0.9, min_tokens=8,
                                  max_classes=8, linkage="single", center=False)[hidden]
        truth, kept = labels[hidden], old[old >= 0].unique()
        clusters.append(len(kept))
        purity.append(sum(int(torch.bincount(truth[old == j]).max()) for j in kept) / int((old >= 0).sum()))
    assert sum(clusters) / 4 < 3 and min(purity) < 0.6


def _upgma_by_hand(points, threshold):
    """Clusters as lists of point lists; merge the pair with the highest mean pairwise cosine while > threshold."""
    groups = [p for p in points if len(p)]
    while len(groups) > 1:
        best, pair = None, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                sim = (groups[i] @ groups[j].T).mean().item()
                if best is None or sim > best:
                    best, pair = sim, (i, j)
        if not best > threshold:
            break
        i, j = pair
        groups = [g for k, g in enumerate(groups) if k not in pair] + [torch.cat([groups[i], groups[j]])]
    return sorted(sorted(round(v, 5) for v in g[:, 0].tolist()) for g in groups)


@pytest.mark.parametrize("seed", range(6))
def test_average_linkage_equals_brute_force_upgma(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (12,), generator=g)
    points = [F.normalize(torch.randn(int(n), 5, generator=g), dim=1) for n in counts]
    sums = torch.stack([p.sum(0) if len(p) else torch.zeros(5) for p in points])
    labels = average_linkage(sums, counts, 0.1)
    got = {}
    for i, p in enumerate(points):
        if len(p):
            got.setdefault(int(labels[i]), []).append(p)
    mine = sorted(sorted(round(v, 5) for v in torch.cat(ps)[:, 0].tolist()) for ps in got.values())
    assert mine == _upgma_by_hand(points, 0.1)


def test_pseudo_mask_is_seen_labels_union_latent_regions():
    targets = torch.tensor([[[0, 255, 255, 255], [1, 255, 255, 255], [255, 255, 1, 255], [255, 255, 255, 255]]])
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 3] = False  # padding row
    latent = torch.tensor([[[-1, 0], [1, 1]]])  # 2x2 token grid
    yp = pseudo_mask(targets, latent, valid, num_seen=2, ignore_label=255)
    expected = torch.tensor([[[0, 255, 2, 2], [1, 255, 2, 2], [3, 3, 1, 3], [255, 255, 255, 255]]])
    assert torch.equal(yp, expected)


def test_variable_class_logits_and_losses_equal_per_image_computations():
    g = torch.Generator().manual_seed(5)
    feats, text = torch.randn(3, 8, 6, 6, generator=g), F.normalize(torch.randn(4, 8, generator=g), dim=1)
    latent = [torch.randn(2, 8, generator=g), torch.zeros(0, 8), torch.randn(1, 8, generator=g)]
    logits, valid = class_logits(feats, text, latent, alpha=1.5, beta=10.0)
    assert logits.shape == (3, 6, 6, 6) and valid.tolist() == [[True] * 6, [True] * 4 + [False] * 2,
                                                               [True] * 5 + [False]]
    targets = torch.randint(0, 4, (3, 6, 6), generator=g)
    targets[0, :2], targets[2, 3:] = 5, 4  # latent classes of images 0 and 2
    targets[1, 0] = 255
    kwargs = {"focal_weight": 100.0, "dice_weight": 1.0, "alpha": 0.25, "gamma": 2.0, "ignore_as_negative": True}
    got = pixel_loss(logits, valid, targets, ignore_label=255, ce_weight=1.0, loss_kwargs=kwargs)
    ce_sum, n, focal_sum, dice_sum, present = 0.0, 0, 0.0, 0.0, 0
    for b in range(3):  # each image over its own classes only
        own = torch.cat([1.5 * torch.einsum("dhw,cd->chw", feats[b], text),
                         10.0 * torch.einsum("dhw,kd->khw", F.normalize(feats[b], dim=0), F.normalize(latent[b], dim=1))])
        keep = targets[b] != 255
        ce_sum += F.cross_entropy(own[:, keep].T, targets[b][keep], reduction="sum").item()
        n += int(keep.sum())
        for c in range(own.shape[0]):
            t = (targets[b] == c).float().flatten()
            p = own[c].flatten().sigmoid()
            bce = F.binary_cross_entropy_with_logits(own[c].flatten(), t, reduction="none")
            p_t = p * t + (1 - p) * (1 - t)
            focal_sum += ((0.25 * t + 0.75 * (1 - t)) * bce * (1 - p_t) ** 2).mean().item()
            if t.sum() > 0:
                present += 1
                dice_sum += 1 - (2 * (p * t).sum().item() + 1) / (p.sum().item() + t.sum().item() + 1)
    assert got["loss_ce"].item() == pytest.approx(ce_sum / n, rel=1e-5)
    assert got["loss_focal"].item() == pytest.approx(100.0 * focal_sum / present, rel=1e-4)
    assert got["loss_dice"].item() == pytest.approx(dice_sum / present, rel=1e-4)
    assert (logits[1, 4:] == PAD_LOGIT).all()


def test_latent_decoder_pads_without_mixing_images():
    torch.manual_seed(6)
    dec = LatentDecoder(8, num_layers=1, num_heads=2, ffn=16, dropout=0.0).eval()
    q = [torch.randn(2, 8), torch.zeros(0, 8), torch.randn(1, 8)]
    m = [torch.randn(3, 8), torch.randn(2, 8), torch.randn(1, 8)]
    out = dec(q, m)
    assert [o.shape[0] for o in out] == [2, 0, 1]
    for i in (0, 2):  # each image alone gives the same embeddings
        torch.testing.assert_close(out[i], dec([q[i]], [m[i]])[0], rtol=1e-5, atol=1e-5)


def test_mask_boxes_cover_exactly_the_mask():
    masks = torch.zeros(2, 8, 10, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 7, 0] = masks[1, 0, 9] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 7, 5], [0, 0, 10, 8]]


@pytest.mark.parametrize("name,stride", [("segformer_tiny", 4), ("setr_tiny", 4)])
def test_students_project_to_the_embedding_width(name, stride):
    torch.manual_seed(0)
    student = build_student(name, 24, img_size=64, drop_path=0.0)
    out = student(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 24, 64 // stride, 96 // stride) and student.output_stride == stride
    with pytest.raises(ValueError, match="segformer_b4"):
        build_student("segformer_b9", 24)


def test_missing_student_weights_name_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="MODEL.C2S.STUDENT_WEIGHTS"):
        build_student("setr_tiny", 8, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(OSError, match="MODEL.C2S.STUDENT_WEIGHTS"):
        build_student("segformer_tiny", 8, weights=str(tmp_path / "missing_folder"))


def test_bad_c2s_keys_are_named_at_the_start():
    from ldvc_d2.config import validate_config
    from tests.conftest import tiny_cfg

    cfg = tiny_cfg("configs/c2s/shapes.yaml", "MODEL.C2S.LOSS_WEIGHTS", "[1.0, 1.0]", "MODEL.C2S.WINDOW_SIZES", "[0, 2]")
    with pytest.raises(ValueError, match="MODEL.C2S.LOSS_WEIGHTS.*MODEL.C2S.WINDOW_SIZES"):
        validate_config(cfg, training=True)
    validate_config(tiny_cfg("configs/c2s/shapes.yaml"), training=True)
