"""Blind spots of older tests: branches that were only exercised with inputs that cannot
tell the right code from a plausible wrong one. Each reference is computed independently of the code path
under test; each test was checked to fail with the matching bug planted in the source."""
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from numpy.testing._private.utils import runstring

from ldvc_d2.checkpoint import (
    TRUST_ENV, Checkpointer, IncompleteWeightsError, UnsafeCheckpointError, load_checkpoint_file,
)
from ldvc_d2.modeling.c2s.mining import mine_latent_classes
from ldvc_d2.modeling.deop import meta_arch as deop_meta_arch
from tests.conftest import toy_cfg


def _build(dataset, config, *opts):
    cfg = toy_cfg(dataset, config, *opts)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _images(*sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


# ---- 1. batched sliding windows ---------------------------------------------------------------------
def test_batched_windows_keep_each_images_vocabulary_of_equal_size(toy_dataset):
    """Blind spot: two images of the same size whose vocabularies differ but have the SAME number of classes
    must not share a forward pass (nor the first image's text): each gets the scores of its own classes,
    exactly as when it is run alone."""
    vocabularies = [["red circle", "green square"], ["lamp", "cat"]]
    images = _images((64, 150), (64, 150))
    opts = ("MODEL.SEGMENTOR.INFERENCE.CROP_SIZE", "64", "MODEL.SEGMENTOR.INFERENCE.STRIDE", "40")
    _, model = _build(toy_dataset, "configs/demo.yaml", *opts, "MODEL.SEGMENTOR.INFERENCE.WINDOW_BATCH", "8")
    model.eval()
    batched = model([{"image": im, "class_names": v} for im, v in zip(images, vocabularies)])
    model.window_batch = 1
    alone = [model([{"image": im, "class_names": v}])[0]["sem_seg"] for im, v in zip(images, vocabularies)]
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the vocabularies score differently
    for out, ref in zip(batched, alone):
        torch.testing.assert_close(out["sem_seg"], ref, atol=1e-5, rtol=0)


# ---- 2. DeOP's default dice range -------------------------------------------------------------------
def test_deop_default_dice_covers_exactly_the_training_classes(toy_dataset, monkeypatch):
    """Blind spot: MODEL.DEOP.LOSS_NUM_CLASS 0 (the default, "all training classes") was only tested with an
    explicit count. The training path's dice must be the per-image dice over the C training-class channels
    (never the no-object channel C, where ignore pixels are positives)."""
    cfg, model = _build(toy_dataset, "configs/deop/shapes_oracle.yaml")
    assert cfg.MODEL.DEOP.LOSS_NUM_CLASS == 0 and cfg.MODEL.DEOP.LOSS == "released"
    seen = []
    semantic_scores = model.semantic_scores
    monkeypatch.setattr(model, "semantic_scores", lambda *a: seen.append(semantic_scores(*a)) or seen[-1])
    g = torch.Generator().manual_seed(0)
    batch = [{"image": im, "sem_seg": torch.randint(0, 5, (32, 32), generator=g)} for im in _images((32, 32), (32, 32))]
    losses = model.train()(batch)
    scores = seen[0].detach()  # S' B×(C+1)×H×W
    c = len(model.train_class_names)
    assert scores.shape[1] == c + 1 == 4
    h, w = scores.shape[-2:]  # training crops are padded (ignore) to the training size
    labels = torch.stack([F.pad(model.label_lut[x["sem_seg"]], (0, w - 32, 0, h - 32), value=255) for x in batch])
    assert (labels == 255).any()
    dice = []
    for i in range(len(batch)):
        p = torch.sigmoid(3.0 * scores[i, :c] - 3.0)
        y = torch.stack([(labels[i] == k).float() for k in range(c)])
        dice.append(1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1))
    want = cfg.MODEL.DEOP.LOSS_WEIGHTS[1] * sum(dice) / len(dice)
    torch.testing.assert_close(losses["loss_dice"].detach(), want, atol=1e-6, rtol=1e-5)


# ---- 3. DeOP inference drops the no-object channel --------------------------------------------------
def test_deop_inference_drops_exactly_the_no_object_channel(toy_dataset, monkeypatch):
    """Blind spot: nothing showed WHICH channel of S' inference drops. Adding to the S' channel of a class
    moves that class's output by the same amount; adding to the no-object channel (the row of t_0 in the
    class-embedding matrix the logits are computed with) moves nothing."""
    _, model = _build(toy_dataset, "configs/deop/shapes_clusters.yaml")
    model.eval()
    rows, bump = [], {}

    def class_logits(anchors, embeddings, scale):
        rows.append(embeddings.detach())
        return original_logits(anchors, embeddings, scale)

    def combine(*args):
        out = original_combine(*args).clone()
        for channel, delta in bump.items():
            out[:, channel] += delta
        return out

    original_logits, original_combine = deop_meta_arch.class_logits, deop_meta_arch.combine_proposals
    monkeypatch.setattr(deop_meta_arch, "class_logits", class_logits)
    monkeypatch.setattr(deop_meta_arch, "combine_proposals", combine)
    inputs = [{"image": _images((32, 32))[0], "class_names": ["red circle", "green square", "blue star"]}]
    base = model(inputs)[0]["sem_seg"]
    t0 = F.normalize(model.no_object.embedding.detach(), dim=-1)[0]
    no_object = [j for j in range(rows[0].shape[0]) if torch.allclose(rows[0][j], t0)]
    assert base.shape[0] == 3 and rows[0].shape[0] == 4 and len(no_object) == 1
    bump[no_object[0]] = 5.0
    torch.testing.assert_close(model(inputs)[0]["sem_seg"], base, atol=0, rtol=0)
    bump.clear()
    klass = [j for j in range(4) if j != no_object[0]][1]  # the S' channel of "green square"
    bump[klass] = 5.0
    moved = model(inputs)[0]["sem_seg"]
    torch.testing.assert_close(moved[1], base[1] + 5.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[[0, 2]], base[[0, 2]], atol=0, rtol=0)


# ---- 4. C2S mining: the min_tokens boundary ---------------------------------------------------------
def test_c2s_cluster_of_exactly_min_tokens_is_kept():
    """Blind spot: clusters far above MIN_CLUSTER only. A cluster of exactly min_tokens tokens is kept; one
    of min_tokens - 1 is dropped (two orthogonal directions, no noise, all else seen)."""
    m = 5
    dense = torch.zeros(3, 6, 6)
    region = torch.zeros(6, 6, dtype=torch.long)  # 0: seen; 1: m tokens along e1; 2: m - 1 tokens along e2
    region.view(-1)[:m] = 1
    region.view(-1)[20:20 + m - 1] = 2
    dense[0], dense[1], dense[2] = (region == 1).float(), (region == 2).float(), (region == 0).float()
    latent = mine_latent_classes(dense, region > 0, window_sizes=[1], iters=5, threshold=0.9, min_tokens=m,
                                 max_classes=8)
    assert (latent[region == 1] == 0).all()
    assert (latent[region != 1] == -1).all()
    both = mine_latent_classes(dense, region > 0, window_sizes=[1], iters=5, threshold=0.9, min_tokens=m - 1,
                               max_classes=8)
    assert (both[region == 1] == 0).all() and (both[region == 2] == 1).all()


# ---- 5. complete-load check: persistent buffers -----------------------------------------------------
def test_checkpoint_without_a_trainable_modules_buffer_is_refused(toy_dataset, tmp_path):
    """Blind spot: only parameters were ever missing. C2S's [CLS] bank (``bank.count``, a persistent buffer, no
    parameter) absent from the file must stop the load (MODEL.WEIGHTS_PARTIAL_LOAD False) with its name."""
    cfg, model = _build(toy_dataset, "configs/c2s/shapes.yaml")
    state = model.state_dict()
    assert "bank.count" in state and "bank.count" not in dict(model.named_parameters())
    full, lacking = str(tmp_path / "full.pth"), str(tmp_path / "no_bank_count.pth")
    torch.save({"model": state}, full)
    torch.save({"model": {k: v for k, v in state.items() if k != "bank.count"}}, lacking)
    assert not cfg.MODEL.WEIGHTS_PARTIAL_LOAD
    Checkpointer(model, partial_load=cfg.MODEL.WEIGHTS_PARTIAL_LOAD).load(full)  # the complete file loads
    with pytest.raises(IncompleteWeightsError, match=r"missing: bank\.count"):
        Checkpointer(model, partial_load=cfg.MODEL.WEIGHTS_PARTIAL_LOAD).load(lacking)


# ---- 6. the .pkl allow-list: NumPy callables that run code ------------------------------------------
class _NumpyExec:
    """Unpickling it makes NumPy's ``runstring`` exec a string that creates ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return runstring, (f"open({self.marker!r}, 'w').close()", {})


def test_pkl_with_a_numpy_global_that_executes_code_is_refused(tmp_path, monkeypatch):
    """Blind spot: only an ``os`` payload was tried. A NumPy global is not allowed because it is NumPy: a
    .pkl whose GLOBAL is numpy.testing's ``runstring`` (exec) is refused and its code does not run."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = str(tmp_path / "code_ran")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {}, "__author__": _NumpyExec(marker)}, protocol=2))
    assert b"runstring" in evil.read_bytes()
    for load in (lambda: load_checkpoint_file(str(evil)), lambda: Checkpointer(torch.nn.Linear(2, 2)).load(str(evil))):
        with pytest.raises(UnsafeCheckpointError, match="runstring"):
            load()
    assert not os.path.exists(marker)
