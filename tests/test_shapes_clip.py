"""The tiny CLIP of the shapes benchmark: loss, determinism, caching, loading by tag, alignment."""
import dataclasses
import hashlib
import json
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from ldvc_d2 import shapes_clip
from ldvc_d2.data.datasets.shapes import CLASS_NAMES, SEEN_CLASSES, UNSEEN_CLASSES, render_scene
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
    assert m1["chance"] == pytest.approx(100 / 16)
    # the reported accuracies are those of the saved weights on the held-out set (25 single-object
    # images per class from seed 12345, "this is a photo of a <class>."), recounted here
    model = open_clip.create_model(shapes_clip.TINY_CLIP_MODEL, pretrained=None)
    model.load_state_dict(s1)
    model.eval()
    tok = open_clip.get_tokenizer(shapes_clip.TINY_CLIP_MODEL)
    rng, hits = np.random.default_rng(12345), []
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        text = model.encode_text(tok([f"this is a photo of a {c}." for c in CLASS_NAMES]))
        for k in range(16):
            images = [render_scene(rng, [k], 64, radius_range=(0.2, 0.32))[0] for _ in range(25)]
            x = torch.stack([(torch.from_numpy(i).permute(2, 0, 1).float() / 255 - mean) / std for i in images])
            sims = F.normalize(model.encode_image(x), dim=-1) @ F.normalize(text, dim=-1).T
            hits.append((sims.argmax(1) == k).sum().item())
    assert m1["accuracy"] == pytest.approx(100 * sum(hits) / 400)
    for key, classes in (("accuracy_seen", SEEN_CLASSES), ("accuracy_unseen", UNSEEN_CLASSES)):
        assert m1[key] == pytest.approx(100 * sum(hits[k] for k in classes) / (25 * len(classes)))


def test_patch_dropout_is_training_only_and_named_in_the_cache_key(tmp_path, monkeypatch):
    """FLIP patch dropout: training steps see 1 + 32 of the 1 + 64 image tokens, the accuracy evaluation
    all 65; the cache key names it, and without it the key is the one from before the field existed."""
    off = PretrainConfig(patch_dropout=0.0)
    old_key = {k: v for k, v in dataclasses.asdict(off).items() if k != "patch_dropout"}
    old_key["world"] = shapes_clip.GENERATOR_VERSION
    assert off.digest() == hashlib.sha1(json.dumps(old_key, sort_keys=True).encode()).hexdigest()[:10]
    assert PretrainConfig(patch_dropout=0.5).digest() != off.digest()

    seen = []
    real_build = shapes_clip._build

    def build(image_size):
        model, tokenizer = real_build(image_size)
        model.visual.transformer.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[1])))
        return model, tokenizer

    monkeypatch.setattr(shapes_clip, "_build", build)
    pretrain_tiny_clip(str(tmp_path / "pd.pt"), PretrainConfig(steps=2, batch_size=4, warmup_steps=1, patch_dropout=0.5),
                       progress=False)
    assert {n for training, n in seen if training} == {1 + 32}
    assert {n for training, n in seen if not training} == {1 + 64}


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
