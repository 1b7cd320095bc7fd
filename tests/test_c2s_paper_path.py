"""C2S's training step against its equations, each written here from the paper (seed 003 eq. 2, 4, 5; C9-C11):
a fake teacher with fixed tokens and a planted mining result make every quantity computable by hand."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from torch import nn

import ldvc_d2.modeling.c2s.meta_arch as meta_arch
from ldvc_d2.modeling.c2s import C2S
from tests.conftest import registered_toy_dataset, tiny_cfg

ALPHA, BETA, TAU, WEIGHTS, N_SEEN, D = 2.5, 3.0, 0.07, (0.5, 2.0, 3.0), 3, 128


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_toy_c2s_paper") as name:
        yield name


class FakeTeacher:
    """Fixed [CLS] and dense tokens; region tokens drawn from a seeded generator, masks recorded."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.cls = F.normalize(torch.randn(2, D, generator=g), dim=1)
        self.dense = F.normalize(torch.randn(2, D, 16, 16, generator=g), dim=1)

    def encode(self, images):
        return {"dense": self.dense, "global": self.cls}

    def region_tokens(self, images, masks, index):
        self.masks, self.index = masks.clone(), index.clone()
        return F.normalize(torch.randn(len(masks), D, generator=torch.Generator().manual_seed(4)), dim=1)


class IdentityDecoder(nn.Module):
    """Records the latent queries and returns them as the latent embeddings A'_u."""

    def forward(self, queries, memory):
        self.queries, self.memory = [q.detach().clone() for q in queries], memory
        return queries


def _planted():
    """Labels (dataset ids; seen 0,1,3 -> training 0,1,2) and per image a 16x16 map of mined latent ids."""
    sem = torch.full((2, 128, 128), 255, dtype=torch.long)
    sem[0, :, :64] = 0
    sem[0, 1, 1] = 255  # one unannotated pixel inside token (0, 0): its latent class vanishes at feature size
    sem[1, :32] = 3
    latent = torch.full((2, 16, 16), -1, dtype=torch.long)
    latent[0, :12, 8:] = 2  # the larger region has the larger id: renumbering is by id, not size
    latent[0, 12:, 8:] = 0
    latent[0, 0, 0] = 1
    latent[1, 4:] = 0
    return sem, latent


def _expected_targets(sem, latent):
    """Y_p by hand: seen training ids, latent id k -> N_s + j (j: rank of k among the ids present at feature
    resolution 32x32, i.e. on pixels (4y, 4x)); everything else 255."""
    lut = {0: 0, 1: 1, 3: 2}
    t = torch.full_like(sem, 255)
    for k, v in lut.items():
        t[sem == k] = v
    up = latent.repeat_interleave(8, 1).repeat_interleave(8, 2)
    for b in range(2):
        fill = (sem[b] == 255) & (up[b] >= 0)
        present = sorted(set(up[b][fill][::1].tolist()) & set(up[b, ::4, ::4][fill[::4, ::4]].tolist()))
        for j, k in enumerate(present):
            t[b][fill & (up[b] == k)] = N_SEEN + j
    return t


def _info_nce(q, k, tau):
    sims = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau
    return torch.stack([-(sims[i, i] - sims[i].logsumexp(0)) for i in range(len(q))]).mean()


def test_losses_follow_eq_2_4_5_and_latent_query_j_is_logit_column_ns_plus_j(toy_dataset, monkeypatch):
    cfg = tiny_cfg("configs/c2s/shapes.yaml", "DATASETS.TRAIN", f"('{toy_dataset}',)", "DATASETS.TEST",
                   f"('{toy_dataset}',)", "MODEL.C2S.ALPHA", str(ALPHA), "MODEL.C2S.BETA", str(BETA),
                   "MODEL.C2S.LOSS_WEIGHTS", str(list(WEIGHTS)), "MODEL.C2S.TAU", str(TAU))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    sem, latent = _planted()
    planted = iter(latent)
    monkeypatch.setattr(meta_arch, "mine_latent_classes", lambda *a, **k: next(planted))
    teacher = FakeTeacher()
    monkeypatch.setattr(C2S, "teacher", property(lambda self: teacher))
    model.latent_decoder = IdentityDecoder()
    seen = {}
    model.student.register_forward_hook(lambda m, i, o: seen.setdefault("F", o.detach().clone()))
    real_pixel_loss = meta_arch.pixel_loss

    def spy(logits, class_valid, targets, **kwargs):
        seen.update(logits=logits.detach().clone(), valid=class_valid.clone(), targets=targets.clone())
        seen["pixel"] = real_pixel_loss(logits, class_valid, targets, **kwargs)
        return seen["pixel"]

    monkeypatch.setattr(meta_arch, "pixel_loss", spy)
    previous = F.normalize(torch.randn(2, D, generator=torch.Generator().manual_seed(5)), dim=1)
    model.bank.push(previous)
    batch = [{"image": torch.zeros(3, 128, 128, dtype=torch.uint8), "sem_seg": sem[b]} for b in range(2)]
    out = model(batch)

    feats, text = seen["F"], model.text_features(model.train_class_names)
    targets = _expected_targets(sem, latent)
    assert torch.equal(seen["targets"], targets)
    assert (targets[0, 1, 1] == 255) and set(targets[0].unique().tolist()) == {0, N_SEEN, N_SEEN + 1, 255}
    small = targets[:, ::4, ::4]  # Y_p at the student's 32x32 (nearest)
    queries = model.latent_decoder.queries
    assert [len(q) for q in queries] == [2, 1]
    for b in range(2):
        for j, q in enumerate(queries[b]):  # latent query j = mean of F over Y_p == N_s + j
            torch.testing.assert_close(q, feats[b][:, small[b] == N_SEEN + j].mean(1), rtol=1e-5, atol=1e-6)
    # logits: alpha F^T A_s, then beta cos(F, A'_u) in column N_s + j; bilinear to the labels
    for b in range(2):
        own = torch.cat([ALPHA * torch.einsum("dhw,cd->chw", feats[b], text),
                         BETA * torch.einsum("dhw,kd->khw", F.normalize(feats[b], dim=0),
                                             F.normalize(queries[b], dim=1))])
        up = F.interpolate(own[None], size=(128, 128), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(seen["logits"][b, :len(own)], up, rtol=1e-4, atol=1e-4)
        assert seen["valid"][b].tolist() == [True] * len(own) + [False] * (N_SEEN + 2 - len(own))
    # eq. 5 cross-entropy: each image over its own classes, mean over labelled pixels
    ce, n = 0.0, 0
    for b in range(2):
        k = N_SEEN + len(queries[b])
        keep = targets[b] != 255
        ce += F.cross_entropy(seen["logits"][b, :k][:, keep].T, targets[b][keep], reduction="sum")
        n += int(keep.sum())
    assert out["loss_ce"].item() == pytest.approx(WEIGHTS[2] * ce.item() / n, rel=1e-4)
    for key in ("loss_focal", "loss_dice"):
        assert out[key].item() == pytest.approx(WEIGHTS[2] * seen["pixel"][key].item(), rel=1e-6)
    # eq. 2: F_g = softmax_L(C_g^T F / sqrt(D)) F^T against [current; previous bank], positive = own index
    flat = feats.flatten(2)
    w = (torch.einsum("bd,bdl->bl", teacher.cls, flat) / D ** 0.5).softmax(1)
    proto = torch.einsum("bl,bdl->bd", w, flat)
    expected_global = _info_nce(proto, torch.cat([teacher.cls, previous]), TAU)
    assert out["loss_global"].item() == pytest.approx(WEIGHTS[0] * expected_global.item(), rel=1e-4)
    # eq. 4: region means of F vs the region tokens, regions image-major with labels ascending
    regions = [(0, 0), (0, N_SEEN), (0, N_SEEN + 1), (1, 2), (1, N_SEEN)]
    assert teacher.index.tolist() == [b for b, _ in regions]
    for r, (b, label) in enumerate(regions):
        assert torch.equal(teacher.masks[r], targets[b] == label)
    means = torch.stack([feats[b][:, small[b] == label].mean(1) for b, label in regions])
    tokens = F.normalize(torch.randn(len(regions), D, generator=torch.Generator().manual_seed(4)), dim=1)
    assert out["loss_local"].item() == pytest.approx(WEIGHTS[1] * _info_nce(means, tokens, TAU).item(), rel=1e-4)
    # the decoder's keys/values: the image's [CLS] token, then its region tokens
    torch.testing.assert_close(model.latent_decoder.memory[1], torch.cat([teacher.cls[1:2], tokens[3:]]))
