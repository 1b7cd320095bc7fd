"""The tiny CLIP of the shapes benchmark: loss, determinism, caching, loading by tag, alignment."""
import math

import numpy as np
import pytest
import torch

from ldvc_d2 import shapes_clip
from ldvc_d2.modeling.clip import RandomClassEmbedding, build_clip_model
from ldvc_d2.shapes_clip import PretrainConfig, contrastive_loss, pretrain_tiny_clip, sample_batch

TINY = PretrainConfig(steps=4, batch_size=8, warmup_steps=2)


def test_contrastive_loss_treats_identical_captions_as_positives():
    torch.manual_seed(0)
    img, txt = torch.randn(3, 4), torch.randn(3, 4)
    caps = ["a red circle", "a blue star", "a red circle"]
    scale = torch.tensor(math.log(2.0))
    got = contrastive_loss(img, txt, caps, scale)
    logits = 2.0 * img @ txt.T
    positives = [[0, 2], [1], [0, 2]]
    i2t = np.mean([-np.mean([torch.log_softmax(logits[i], 0)[j].item() for j in positives[i]]) for i in range(3)])
    t2i = np.mean([-np.mean([torch.log_softmax(logits[:, i], 0)[j].item() for j in positives[i]]) for i in range(3)])
    assert got.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-5)


def test_batches_are_deterministic_and_captioned():
    a, caps_a = sample_batch(np.random.default_rng(3), 6, 48)
    b, caps_b = sample_batch(np.random.default_rng(3), 6, 48)
    assert a.shape == (6, 3, 48, 48) and torch.equal(a, b) and caps_a == caps_b
    assert all(any(c in cap for c in shapes_clip.CLASS_NAMES) for cap in caps_a)


def test_pretraining_is_deterministic_and_written_atomically(tmp_path):
    p1, p2 = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    m1 = pretrain_tiny_clip(p1, TINY, progress=False)
    pretrain_tiny_clip(p2, TINY, progress=False)
    s1, s2 = (torch.load(p, weights_only=True)["state_dict"] for p in (p1, p2))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]
    assert 0 <= m1["accuracy"] <= 100 and m1["chance"] == pytest.approx(100 / 16)


def test_short_pretraining_aligns_images_and_text(tmp_path):
    """A short schedule already classifies held-out images well above chance (1/16)."""
    cfg = PretrainConfig(steps=120, batch_size=32, warmup_steps=10)
    metrics = pretrain_tiny_clip(str(tmp_path / "short.pt"), cfg, progress=False)
    assert metrics["accuracy"] > 3 * metrics["chance"], metrics


def test_shapes_tag_resolves_to_the_cached_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = shapes_clip.pretrain_tiny_clip
    monkeypatch.setattr(shapes_clip, "pretrain_tiny_clip", lambda path, cfg: calls.append(path) or real(path, TINY, progress=False))
    # first use pretrains inside build_clip_model; the random state after the build (which then
    # initialises LDVC's prompts and head) must be the same as when the checkpoint is cached
    torch.manual_seed(0)
    build_clip_model("LDVC-Tiny", "shapes", cache_dir=str(tmp_path))
    after_first_use = torch.rand(4)
    path = shapes_clip.ensure_tiny_clip(str(tmp_path))
    assert shapes_clip.ensure_tiny_clip(str(tmp_path)) == path and len(calls) == 1
    torch.manual_seed(0)
    model, _ = build_clip_model("LDVC-Tiny", "shapes", cache_dir=str(tmp_path))
    assert torch.equal(torch.rand(4), after_first_use)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
    assert len(calls) == 1


def test_random_class_embedding_is_fixed_per_name():
    emb = RandomClassEmbedding(16)
    a = emb(["red circle", "blue star"])
    b = emb(["blue star", "red circle", "red circle"])
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a[0], b[2])
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    assert (a[0] - a[1]).abs().max() > 0.1
