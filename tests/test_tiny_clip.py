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

from ldvc_d2.benchmarks.shapes import cache, shipped, tiny_clip
from ldvc_d2.benchmarks.shapes.tiny_clip import PretrainConfig, contrastive_loss, pretrain_tiny_clip, sample_batch
from ldvc_d2.benchmarks.shapes.world import (
    CLASS_NAMES, GENERATOR_VERSION, SEEN_CLASSES, UNSEEN_CLASSES, render_scene,
)
from ldvc_d2.modeling.clip import RandomClassEmbedding, build_clip_model

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
    assert all(any(c in cap for c in CLASS_NAMES) for cap in caps_a)


def test_background_rendering_draws_the_batches_of_the_loop():
    cfg = PretrainConfig(steps=3, batch_size=5, image_size=48)
    rng = np.random.default_rng(7)
    expected = [sample_batch(rng, 5, 48, cfg.two_object_prob) for _ in range(3)]
    got = list(tiny_clip._batches(np.random.default_rng(7), cfg))
    assert len(got) == 3
    for (images, captions), (want_images, want_captions) in zip(got, expected):
        assert torch.equal(images, want_images) and captions == want_captions


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
    model = open_clip.create_model(tiny_clip.TINY_CLIP_MODEL, pretrained=None)
    model.load_state_dict(s1)
    model.eval()
    tok = open_clip.get_tokenizer(tiny_clip.TINY_CLIP_MODEL)
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
    all 65; the cache key names it, and without it (and in fp32) the key is the one from before the fields
    patch_dropout and precision existed."""
    off = PretrainConfig(patch_dropout=0.0, precision="fp32")
    old_key = {k: v for k, v in dataclasses.asdict(off).items() if k not in ("patch_dropout", "precision")}
    old_key["world"] = GENERATOR_VERSION
    assert off.digest() == hashlib.sha1(json.dumps(old_key, sort_keys=True).encode()).hexdigest()[:10]
    assert PretrainConfig(patch_dropout=0.5).digest() != off.digest()

    seen = []
    real_build = tiny_clip._build

    def build(image_size):
        model, tokenizer = real_build(image_size)
        model.visual.transformer.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[1])))
        return model, tokenizer

    monkeypatch.setattr(tiny_clip, "_build", build)
    pretrain_tiny_clip(str(tmp_path / "pd.pt"), PretrainConfig(steps=2, batch_size=4, warmup_steps=1, patch_dropout=0.5),
                       progress=False)
    assert {n for training, n in seen if training} == {1 + 32}
    assert {n for training, n in seen if not training} == {1 + 64}


def test_encode_captions_equals_encode_text_and_its_gradients():
    """Running the causal text tower only up to the longest caption's [EOS] changes nothing: features and
    gradients equal open_clip's full-context encode_text."""
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip.TINY_CLIP_MODEL, pretrained=None)
    tokens = open_clip.get_tokenizer(tiny_clip.TINY_CLIP_MODEL)(sample_batch(np.random.default_rng(0), 12, 48)[1])
    assert tokens.argmax(-1).max() + 1 < tokens.shape[1]  # something is cut
    grads = []
    for encode in (model.encode_text, lambda t: tiny_clip.encode_captions(model, t)):
        model.zero_grad()
        out = encode(tokens)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.transformer.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    for cut, full in zip(grads[1][1], grads[0][1]):  # sums over other token counts: rounding only
        assert (cut - full).abs().max() <= 1e-5 * full.abs().max()


def test_bf16_pretraining_runs_products_in_bfloat16_and_is_named_in_the_cache_key(tmp_path, monkeypatch):
    """precision "bf16": training forwards under bfloat16 autocast, the accuracy evaluation and the saved
    weights in float32; a key of its own; an unknown precision is an error naming the field."""
    assert PretrainConfig(precision="bf16").digest() != PretrainConfig(precision="fp32").digest()
    seen = []
    real_build = tiny_clip._build

    def build(image_size):
        model, tokenizer = real_build(image_size)
        model.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
            lambda m, args, out: seen.append((m.training, out.dtype)))
        return model, tokenizer

    monkeypatch.setattr(tiny_clip, "_build", build)
    metrics = pretrain_tiny_clip(str(tmp_path / "bf16.pt"), PretrainConfig(steps=2, batch_size=4, warmup_steps=1,
                                                                           precision="bf16"), progress=False)
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    state = torch.load(str(tmp_path / "bf16.pt"), weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert math.isfinite(metrics["final_loss"])
    with pytest.raises(ValueError, match="PretrainConfig.precision"):
        PretrainConfig(precision="fp16")


def test_short_pretraining_aligns_images_and_text(tmp_path):
    """A short schedule already classifies held-out images well above chance (1/16): 60 steps of 16
    images reach 28 % here, untrained weights about 6 %."""
    cfg = PretrainConfig(steps=60, batch_size=16, warmup_steps=10)
    metrics = pretrain_tiny_clip(str(tmp_path / "short.pt"), cfg, progress=False)
    assert metrics["accuracy"] > 3 * metrics["chance"], metrics


def test_shapes_tag_resolves_to_the_cached_checkpoint(tmp_path, monkeypatch):
    # without a shipped checkpoint (tests/test_tiny_clip_shipped.py covers the shipped one) first use pretrains
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "no_shipped")
    calls = []
    monkeypatch.setattr(cache, "pretrain_tiny_clip",
                        lambda path, cfg: calls.append(path) or pretrain_tiny_clip(path, TINY, progress=False))
    # first use pretrains inside build_clip_model; the random state after the build (which then
    # initialises LDVC's prompts and head) must be the same as when the checkpoint is cached
    torch.manual_seed(0)
    build_clip_model("LDVC-Tiny", "shapes", cache_dir=str(tmp_path))
    after_first_use = torch.rand(4)
    path = cache.ensure_tiny_clip(str(tmp_path))
    assert cache.ensure_tiny_clip(str(tmp_path)) == path and len(calls) == 1
    torch.manual_seed(0)
    model, _ = build_clip_model("LDVC-Tiny", "shapes", cache_dir=str(tmp_path))
    assert torch.equal(torch.rand(4), after_first_use)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
    assert len(calls) == 1


def test_each_recipe_tag_pretrains_its_own_checkpoint(tmp_path, monkeypatch):
    """"shapes" is the default PretrainConfig (the benchmark's and the quick start's checkpoint, name
    unchanged), "shapes-quick" the opt-in cheaper recipe; each resolves to a file named by its own digest."""
    assert tiny_clip.TINY_CLIP_RECIPES["shapes"] == PretrainConfig()
    quick = tiny_clip.TINY_CLIP_RECIPES["shapes-quick"]
    assert quick.digest() != PretrainConfig().digest()
    trained = []
    monkeypatch.setattr(cache, "pretrain_tiny_clip", lambda path, cfg: trained.append(cfg) or
                        pretrain_tiny_clip(path, TINY, progress=False))
    build_clip_model("LDVC-Tiny", "shapes-quick", cache_dir=str(tmp_path))
    assert trained == [quick]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"LDVC-Tiny-shapes-{quick.digest()}.pt"]


def test_random_class_embedding_is_fixed_per_name():
    emb = RandomClassEmbedding(16)
    a = emb(["red circle", "blue star"])
    b = emb(["blue star", "red circle", "red circle"])
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a[0], b[2])
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    assert (a[0] - a[1]).abs().max() > 0.1
