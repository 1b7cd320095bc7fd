"""The DeOP meta-architecture: what trains, proposal sources, the ORACLE label, end to end through train_net.py."""
import json
import os

import pytest
import torch
from detectron2.modeling import build_model

from ldvc_d2.config import validate_config
from ldvc_d2.modeling.deop.weights import load_proposal_net
from tests import tiny_shapes
from tests.conftest import REPO, registered_toy_dataset, tiny_cfg
from tests.scripts import run_train_net

TRAINED = {"text.ctx", "no_object.embedding", "visual_prompts.prompts"}


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_toy_deop") as name:
        yield name


def _cfg(dataset, *opts, config="configs/deop/shapes_oracle.yaml"):
    return tiny_cfg(config, "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)", *opts)


def _batch(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
             "sem_seg": torch.randint(0, 5, (size, size), generator=g)} for _ in range(n)]


@pytest.mark.parametrize("source", ["gt", "clusters"])
def test_one_step_updates_exactly_cal_prompts_and_no_object(toy_dataset, source):
    torch.manual_seed(0)
    model = build_model(_cfg(toy_dataset, "MODEL.DEOP.PROPOSALS", source))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == TRAINED | {n for n in before if n.startswith("cal.")}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    losses = model(_batch())
    assert set(losses) == {"loss_focal", "loss_dice"}
    sum(losses.values()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # DETR's first layer: queries start at 0, so its self-attention values are the (zero-init) bias and its
    # output a constant that norm1 maps to 0; these three get zero gradients at the first step by construction
    dead = {f"cal.layers.0.{n}" for n in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "norm1.weight")}
    assert changed == trainable - dead  # every other trainable tensor moved (incl. Q_pos), nothing of CLIP did
    assert all(model.get_parameter(n).grad is not None for n in dead)
    assert all(model.get_parameter(n).grad is None for n in before if n not in trainable)
    grad = model.get_parameter("visual_prompts.prompts").grad
    assert all(grad[i].abs().sum() > 0 for i in range(grad.shape[0]))  # every additive prompt P_b is used


def test_oracle_inference_reads_the_label_and_is_labelled(toy_dataset):
    cfg = _cfg(toy_dataset)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = _batch(1)[0]
    out = model([{**x, "height": 40, "width": 40}])[0]["sem_seg"]
    assert out.shape == (5, 40, 40) and torch.isfinite(out).all()
    # masks are the label's segments: the score map is constant inside a segment
    model._oracle_label = x["sem_seg"]
    scores = model.window_scores(model.preprocess(x["image"]), model.text_features(["a", "b", "c", "d", "e"]))
    for c in x["sem_seg"].unique():
        inside = scores[:, x["sem_seg"] == c]
        assert torch.allclose(inside, inside[:, :1].expand_as(inside), atol=1e-5)
    assert "ORACLE" in type(model).describe_protocol(cfg)
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        model._oracle_label = None
        model([{"image": x["image"]}])
    with pytest.raises(ValueError, match="INFERENCE.MODE 'whole'"):
        build_model(_cfg(toy_dataset, "MODEL.SEGMENTOR.INFERENCE.MODE", "slide"))
    with pytest.raises(ValueError, match="has 4 blocks"):
        build_model(_cfg(toy_dataset, "MODEL.DEOP.VISUAL_PROMPT_LAYERS", "[0, 4]"))
    with pytest.raises(ValueError, match="LOSS_NUM_CLASS is 9"):
        build_model(_cfg(toy_dataset, "MODEL.DEOP.LOSS_NUM_CLASS", "9"))  # the toy set has 3 training classes


def test_maskformer_proposals_load_stage2_weights(toy_dataset, tmp_path):
    cfg = _cfg(toy_dataset, "MODEL.DEOP.PROPOSALS", "maskformer", config="configs/deop/shapes.yaml")
    with pytest.raises(FileNotFoundError, match="PROPOSAL_WEIGHTS"):
        load_proposal_net(cfg, str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="PROPOSAL_WEIGHTS is empty"):
        validate_config(cfg, training=True)
    validate_config(cfg, training=False)  # evaluation: MODEL.WEIGHTS (stage 3) holds the proposal network
    from ldvc_d2.modeling.deop.proposals import build_proposal_network

    torch.manual_seed(1)
    net = build_proposal_network(cfg)
    path = str(tmp_path / "stage2.pth")
    torch.save({"model": {f"proposal_net.{k}": v for k, v in net.state_dict().items()}}, path)
    loaded = load_proposal_net(cfg, path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.save({"model": {"other.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="proposal_net"):
        load_proposal_net(cfg, path)


FAST = ["MODEL.CLIP.PRETRAINED", "", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.CROP.SIZE", "(64, 64)", "INPUT.TRAIN_SCALE", "(256, 64)"]


@pytest.mark.parametrize("config", ["shapes_oracle", "shapes_clusters"])
def test_train_then_eval_only(tmp_path, config):
    """train_net's parser and main train, then evaluate the checkpoint with --eval-only (in this process:
    tests/scripts.py run_train_net)."""
    root = str(tmp_path / "data")
    tiny_shapes.make(root)
    out = str(tmp_path / "out")
    flags = ["--config-file", os.path.join(REPO, f"configs/deop/{config}.yaml"),
             "--register", os.path.join(root, "register_tiny_shapes.py")]
    common = [*FAST, "OUTPUT_DIR", out, "DATASETS.TRAIN", f"('{tiny_shapes.TRAIN}',)",
              "DATASETS.TEST", f"('{tiny_shapes.VAL}',)"]
    _, log = run_train_net(*flags, *common, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0")
    assert "Trainable parameters:" in log
    _, log = run_train_net(*flags, "--eval-only", *common, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"))
    with open(tmp_path / "out" / "inference" / tiny_shapes.VAL / "sem_seg_metrics.json") as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 6 and {"mIoU(S)", "mIoU(U)", "hIoU"} <= set(metrics["metrics"])
    oracle = config == "shapes_oracle"  # said by the protocol and by a warning (the config file's text says it too)
    assert ("ORACLE" in metrics["protocol"]) == oracle and ("DeOP with ORACLE proposals" in log) == oracle


@pytest.mark.parametrize("opts", [("MODEL.DEOP.GPS_MODE", "gps", "MODEL.DEOP.LOSS", "paper"),
                                  ("MODEL.DEOP.GPS_MODE", "mask_guided", "MODEL.DEOP.CAL_HEADS", "1",
                                   "MODEL.DEOP.GPS_LAYERS", "[-2, -1]")])
def test_paper_variants_train(toy_dataset, opts):
    torch.manual_seed(0)
    model = build_model(_cfg(toy_dataset, *opts)).train()
    losses = model(_batch(1))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.cal.heat_q.weight.grad.abs().sum() > 0 and model.text.ctx.grad.abs().sum() > 0
