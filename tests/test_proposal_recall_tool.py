"""tools/proposal_recall.py (DeOP supplement Table 8): its table for a tiny untrained network on the shapes data,
and one recall computed by hand from the label files."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from ldvc_d2.benchmarks.shapes.dataset import UNSEEN_CLASSES  # noqa: E402
from ldvc_d2.modeling.deop.proposals import MaskFormerProposals  # noqa: E402
from tests import tiny_shapes  # noqa: E402
from tests.scripts import load_script  # noqa: E402

TINY = ["MODEL.DEOP.PROPOSAL_NET.BACKBONE", "resnet10t", "MODEL.DEOP.PROPOSAL_NET.NUM_QUERIES", "4",
        "MODEL.DEOP.PROPOSAL_NET.HIDDEN_DIM", "32", "MODEL.DEOP.PROPOSAL_NET.PIXEL_DECODER_DIM", "32",
        "MODEL.DEOP.PROPOSAL_NET.MASK_DIM", "32", "MODEL.DEOP.PROPOSAL_NET.DIM_FEEDFORWARD", "64",
        "DATASETS.TRAIN", f"('{tiny_shapes.TRAIN}',)", "DATASETS.TEST", f"('{tiny_shapes.VAL}',)",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("recall_shapes"))
    folder = tiny_shapes.make(root)
    tiny_shapes.register(folder)
    return folder


def _run(tmp_path, capsys, *extra):
    tool = load_script("tools/proposal_recall.py")
    out = str(tmp_path / "recall.json")
    result = tool.main(["--config-file", "configs/deop/proposals_shapes.yaml", "--allow-untrained", "--output", out,
                        *TINY, *extra])
    with open(out) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    return result, capsys.readouterr().out


def test_untrained_network_prints_the_table_beside_the_paper(data, tmp_path, capsys):
    torch.manual_seed(0)
    result, printed = _run(tmp_path, capsys)
    lines = [line for line in printed.splitlines() if line.startswith(("Proposal recall", "Recall@"))]
    assert lines[0].startswith(f"Proposal recall on {tiny_shapes.VAL}: 6 images")
    assert lines[1].split()[:4] == ["Recall@30", *(f"{result['Recall@30'][k]:.3f}" for k in ("all", "seen", "unseen"))]
    assert lines[1].endswith("0.59 / 0.57 / 0.71") and lines[2].endswith("0.45 / 0.44 / 0.56")
    seg = result["segments"]
    assert seg["all"] == seg["seen"] + seg["unseen"] > 0
    for key in ("Recall@30", "Recall@50"):  # all = segment-weighted mean of seen and unseen
        r = result[key]
        assert r["all"] == pytest.approx((r["seen"] * seg["seen"] + r["unseen"] * seg["unseen"]) / seg["all"])


def test_whole_image_proposals_give_the_hand_computed_recall(data, tmp_path, capsys, monkeypatch):
    # every proposal covers the whole image: a segment's best IoU is its share of the non-ignore pixels
    monkeypatch.setattr(MaskFormerProposals, "forward", lambda self, x: torch.full((x.shape[0], 4, x.shape[-2] // 4,
                                                                                    x.shape[-1] // 4), 10.0))
    result, _ = _run(tmp_path, capsys)
    folder = os.path.join(data, "labels", "val")
    shares = {"all": [], "unseen": []}
    for name in sorted(os.listdir(folder)):
        label = np.array(Image.open(os.path.join(folder, name)))
        valid = label != 255
        for c in np.unique(label[valid]):
            share = (label == c).sum() / valid.sum()
            shares["all"].append(share)
            if int(c) in UNSEEN_CLASSES:
                shares["unseen"].append(share)
    for key, t in (("Recall@30", 0.3), ("Recall@50", 0.5)):
        for part in ("all", "unseen"):
            want = sum(s >= t for s in shares[part]) / len(shares[part])
            assert result[key][part] == pytest.approx(want), (key, part)
    assert result["segments"]["all"] == len(shares["all"])
