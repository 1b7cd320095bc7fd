"""DeOP stage 2, the proposal network (SEED_SYSTEMS §4.1 D1): matching, losses and what one step trains.

Expected values are computed here from the definitions: the matching cost 1·(−p_class) + 20·focal + 1·dice
minimised by brute force over every injective query assignment, and MaskFormer's losses (CE with no-object
weight 0.1 over all queries, sigmoid focal and dice per matched mask divided by the number of masks) on the
last and every earlier decoder layer.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from detectron2.modeling import build_model  # noqa: E402

from ldvc_d2.modeling.deop.proposals import build_proposal_network, semantic_to_masks  # noqa: E402
from ldvc_d2.solver import build_optimizer, param_groups  # noqa: E402
from tests.conftest import registered_toy_dataset, tiny_cfg  # noqa: E402

CONFIG = "configs/deop/proposals_shapes.yaml"
TINY = ["MODEL.DEOP.PROPOSAL_NET.BACKBONE", "resnet10t", "MODEL.DEOP.PROPOSAL_NET.NUM_QUERIES", "5",
        "MODEL.DEOP.PROPOSAL_NET.HIDDEN_DIM", "32", "MODEL.DEOP.PROPOSAL_NET.PIXEL_DECODER_DIM", "32",
        "MODEL.DEOP.PROPOSAL_NET.MASK_DIM", "32", "MODEL.DEOP.PROPOSAL_NET.DIM_FEEDFORWARD", "64",
        "MODEL.DEOP.PROPOSAL_NET.DROPOUT", "0.0"]


def _focal(logits, y, alpha=0.25, gamma=2.0):
    """Element-wise sigmoid focal loss, written out."""
    p = logits.sigmoid()
    return -(alpha * y * (1 - p) ** gamma * torch.log(p) + (1 - alpha) * (1 - y) * p ** gamma * torch.log(1 - p))


def _dice(logits, y):
    p = logits.sigmoid().flatten()
    y = y.flatten()
    return 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)


def _cost(class_logits, mask_logits, masks, labels, class_weight=1.0):
    """N×K matching cost of one image, pairs computed one by one (``class_weight`` 0: the paper's mask-only cost)."""
    probs = class_logits.softmax(-1)
    cost = torch.zeros(mask_logits.shape[0], len(labels), dtype=torch.float64)
    for q in range(mask_logits.shape[0]):
        for k in range(len(labels)):
            m, y = mask_logits[q].double(), masks[k].double()
            cost[q, k] = -class_weight * probs[q, labels[k]] + 20 * _focal(m, y).mean() + _dice(m, y)
    return cost


def _brute_force(cost):
    """Minimum total cost over all injective maps target k -> query."""
    n, k = cost.shape
    return min(sum(float(cost[q, j]) for j, q in enumerate(perm)) for perm in itertools.permutations(range(n), k))


@pytest.fixture(scope="module")
def net():
    with registered_toy_dataset("deop_prop_toy") as name:
        cfg = tiny_cfg(CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)")
        torch.manual_seed(0)
        return build_proposal_network(cfg)


@pytest.mark.parametrize("seed,n,k", [(0, 4, 3), (1, 5, 2), (2, 5, 5), (3, 3, 1)])
def test_hungarian_matching_equals_brute_force(net, seed, n, k):
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(1, n, 4, generator=g) * 3
    mask_logits = torch.randn(1, n, 6, 6, generator=g) * 3
    masks = (torch.rand(k, 6, 6, generator=g) > 0.5).float()
    labels = torch.randint(0, 3, (k,), generator=g)
    (queries, targets), = net.maskformer.matcher(mask_logits, class_logits, [masks], [labels])
    assert sorted(targets.tolist()) == list(range(k)) and len(set(queries.tolist())) == k
    cost = _cost(class_logits[0], mask_logits[0], masks, labels)
    matched = sum(float(cost[q, t]) for q, t in zip(queries.tolist(), targets.tolist()))
    assert matched == pytest.approx(_brute_force(cost), rel=1e-5, abs=1e-6)


def _expected_losses(class_logits, mask_logits, masks, labels, num_classes, class_weight=1.0):
    """MaskFormer's losses of one decoder layer for a batch, matching by brute force."""
    b, n = class_logits.shape[:2]
    target_classes = torch.full((b, n), num_classes, dtype=torch.long)
    focal = dice = 0.0
    for i in range(b):
        small = F.interpolate(masks[i][:, None], size=mask_logits.shape[-2:], mode="nearest")[:, 0]
        cost = _cost(class_logits[i], mask_logits[i], small, labels[i], class_weight)
        best = min(itertools.permutations(range(n), len(labels[i])),
                   key=lambda perm: sum(float(cost[q, j]) for j, q in enumerate(perm)))
        for j, q in enumerate(best):
            target_classes[i, q] = labels[i][j]
            up = F.interpolate(mask_logits[i, q][None, None], size=masks[i].shape[-2:], mode="bilinear",
                               align_corners=False)[0, 0]
            focal = focal + _focal(up, masks[i][j]).mean()
            dice = dice + _dice(up, masks[i][j])
    num_masks = max(sum(len(x) for x in labels), 1)
    weights = torch.ones(num_classes + 1)
    weights[-1] = 0.1
    nll = -class_logits.log_softmax(-1).gather(-1, target_classes[..., None])[..., 0]
    w = weights[target_classes]
    ce = (w * nll).sum() / w.sum()
    return {"loss_cross_entropy": ce, "loss_mask": 20 * focal / num_masks, "loss_dice": dice / num_masks}


def test_losses_equal_direct_formulas_on_every_decoder_layer(net):
    torch.manual_seed(1)
    net.train()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.randint(0, 3, (2, 32, 32))
    targets[0, :8] = 255  # ignore pixels belong to no mask
    targets[1] = torch.where(targets[1] == 2, 255, targets[1])
    losses = net.losses(images, targets, 255)
    class_logits, mask_logits, aux = net.predict(images)
    assert len(aux) == 1  # 2 decoder layers: the last one + one auxiliary
    masks, labels = zip(*[semantic_to_masks(t, 255) for t in targets])
    assert [x.tolist() for x in labels] == [[0, 1, 2], [0, 1]]
    assert torch.equal(masks[0][1], (targets[0] == 1).float())
    for suffix, (c, m) in (("", (class_logits, mask_logits)),
                           ("_0", (aux[0]["class_queries_logits"], aux[0]["masks_queries_logits"]))):
        expected = _expected_losses(c.detach(), m.detach(), masks, labels, num_classes=3)
        for key, value in expected.items():
            assert float(losses[key + suffix]) == pytest.approx(float(value), rel=1e-4), key + suffix
    assert mask_logits.shape == (2, 5, 8, 8) and net(images).shape == (2, 5, 8, 8)


def test_one_step_trains_exactly_the_proposal_network():
    with registered_toy_dataset("deop_prop_step") as name:
        cfg = tiny_cfg(CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)", "SOLVER.OPTIMIZER", "SGD",
                       "SOLVER.BASE_LR", "0.1")
        torch.manual_seed(0)
        model = build_model(cfg)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("proposal_net.") for n in trainable)
    assert trainable == {n for n, _ in model.named_parameters()}
    batch = [{"image": torch.randint(0, 256, (3, 64, 64)).float(), "sem_seg": torch.randint(0, 5, (64, 64))}
             for _ in range(2)]
    optimizer = build_optimizer(cfg, model)
    sum(model(batch).values()).backward()
    # At initialisation some weights get exactly zero gradient (timm zero-initialises each block's last
    # BatchNorm; DETR's first self-attention sees all-zero queries), but every part of the network learns.
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    parts = ("encoder._backbone.conv1", "pixel_level_module.decoder", "transformer_module.decoder.layers.1",
             "queries_embedder", "class_predictor", "mask_embedder")
    assert all(any(part in n for n in with_grad) for part in parts), sorted(with_grad)[:5]
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = {k for k in changed if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert with_grad <= changed - stats <= trainable
    assert {"pixel_mean", "pixel_std", "label_lut"}.isdisjoint(changed)


@pytest.mark.parametrize("frozen_bn", ["True", "False"])
def test_backbone_weights_come_from_a_local_torchvision_style_file(tmp_path, frozen_bn):
    import timm

    torch.manual_seed(5)
    reference = timm.create_model("resnet10t", pretrained=False)  # state dict with the classifier "fc.*"
    with torch.no_grad():  # distinct values everywhere (BatchNorm statistics included)
        for value in reference.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    path = str(tmp_path / "resnet10t.pth")
    torch.save(reference.state_dict(), path)
    with registered_toy_dataset("deop_prop_weights") as name:
        net = build_proposal_network(tiny_cfg(CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)",
                                              "MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS", path,
                                              "MODEL.DEOP.PROPOSAL_NET.FREEZE_BACKBONE_BN", frozen_bn))
        loaded = net.maskformer.model.pixel_level_module.encoder._backbone.state_dict()
        assert torch.equal(loaded["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])
        for key in ("layer4.0.conv2.weight", "layer4.0.bn2.running_var", "layer4.0.bn2.weight"):
            assert torch.equal(loaded[key], reference.state_dict()[key]), key
        with pytest.raises(FileNotFoundError, match="MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS"):
            build_proposal_network(tiny_cfg(CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)",
                                            "MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS", str(tmp_path / "missing.pth")))
        with pytest.raises(ValueError, match="does not fit"):
            build_proposal_network(tiny_cfg(CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)", "MODEL.DEOP.PROPOSAL_NET.BACKBONE",
                                            "resnet18", "MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS", path))


def test_mask_loss_only_matches_and_trains_masks_without_the_class_head():
    """The paper's stage 2: class-agnostic, matched on 20·focal + dice only, no cross-entropy, class head frozen."""
    with registered_toy_dataset("deop_prop_agnostic") as name:
        cfg = tiny_cfg(CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)", "MODEL.DEOP.PROPOSAL_NET.CLASS_AGNOSTIC", "True",
                       "MODEL.DEOP.PROPOSAL_NET.MASK_LOSS_ONLY", "True")
        torch.manual_seed(3)
        model = build_model(cfg)
    net = model.proposal_net
    assert net.num_classes == 1
    assert not any(p.requires_grad for p in net.maskformer.class_predictor.parameters())
    net.train()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 32, 32)
    targets = torch.randint(0, 3, (2, 32, 32))
    targets[1, :, :10] = 255
    losses = net.losses(images, targets, 255)
    assert not [k for k in losses if "cross_entropy" in k]
    class_logits, mask_logits, aux = net.predict(images)
    masks, labels = zip(*[semantic_to_masks(t, 255, class_agnostic=True) for t in targets])
    for suffix, (c, m) in (("", (class_logits, mask_logits)),
                           ("_0", (aux[0]["class_queries_logits"], aux[0]["masks_queries_logits"]))):
        expected = _expected_losses(c.detach(), m.detach(), masks, labels, num_classes=1, class_weight=0.0)
        for key in ("loss_mask", "loss_dice"):
            assert float(losses[key + suffix]) == pytest.approx(float(expected[key]), rel=1e-4), key + suffix
    # the matcher minimises the mask-only cost; with strong class scores that optimum differs from 1·class + masks
    differs = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        c_logits, m_logits = torch.randn(1, 4, 2, generator=g) * 10, torch.randn(1, 4, 6, 6, generator=g)
        small, zeros = (torch.rand(3, 6, 6, generator=g) > 0.5).float(), torch.zeros(3, dtype=torch.long)
        (queries, targets), = net.maskformer.matcher(m_logits, c_logits, [small], [zeros])
        cost = _cost(c_logits[0], m_logits[0], small, zeros, class_weight=0.0)
        matched = sum(float(cost[q, t]) for q, t in zip(queries.tolist(), targets.tolist()))
        assert matched == pytest.approx(_brute_force(cost), rel=1e-5, abs=1e-6)
        with_class = _cost(c_logits[0], m_logits[0], small, zeros)
        differs += matched > _brute_force(cost) + 1e-6 or _brute_force(with_class) < sum(
            float(with_class[q, t]) for q, t in zip(queries.tolist(), targets.tolist())) - 1e-6
    assert differs  # the seeds tell the two costs apart
    model.eval()
    with pytest.raises(ValueError, match="CLASS_AGNOSTIC"):
        model([{"image": torch.randint(0, 256, (3, 32, 32)).float(), "class_names": ["a", "b"]}])


def test_backbone_lr_is_a_tenth_of_the_rest():
    """Released stage 2: every ResNet tensor at 0.1 x BASE_LR (MaskFormer BACKBONE_MULTIPLIER), the rest at BASE_LR."""
    with registered_toy_dataset("deop_prop_lr") as name:
        cfg = tiny_cfg("configs/deop/proposals_voc.yaml", *TINY, "DATASETS.TRAIN", f"('{name}',)",
                       "MODEL.DEOP.PROPOSAL_NET.RES5_MULTI_GRID", "[]")
        model = build_model(cfg)
    backbone = {f"proposal_net.maskformer.model.pixel_level_module.encoder.{n}"
                for n, p in model.proposal_net.maskformer.model.pixel_level_module.encoder.named_parameters()
                if p.requires_grad}
    assert backbone
    groups = param_groups(model, cfg)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert {n for n, v in lr.items() if v == pytest.approx(0.1 * cfg.SOLVER.BASE_LR)} == backbone
    assert all(v == pytest.approx(cfg.SOLVER.BASE_LR) for n, v in lr.items() if n not in backbone)
    assert type(build_optimizer(cfg, model)).__name__ == "FullModelClippingAdamW"


def test_proposal_recall_against_pixel_counts():
    from ldvc_d2.modeling.deop.proposals import proposal_recall, segment_best_iou

    label = torch.full((4, 6), 255)
    label[:2, :3] = 0  # 6 pixels
    label[2:, :] = 1  # 12 pixels
    logits = torch.full((2, 4, 6), -5.0)
    logits[0, :2, :2] = 5.0  # 4 of class 0's pixels: IoU 4/6
    logits[1, 2:, :3] = 5.0  # 6 of class 1's 12 pixels ...
    logits[1, 0, 5] = 5.0  # ... plus an ignore pixel, not counted: IoU 6/12
    best = segment_best_iou(logits, label)
    assert best == pytest.approx({0: 4 / 6, 1: 6 / 12})
    assert proposal_recall([best], 0.5) == 1.0 and proposal_recall([best], 0.6) == 0.5
    assert proposal_recall([best, {1: 0.7}], 0.6, classes=[1]) == 0.5
