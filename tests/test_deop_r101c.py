"""DeOP's R101c proposal backbone (released zero_shot_maskformer_R101c): timm's deep-stem ResNet + res5 multi-grid,
loading a detectron2 ImageNet ``.pkl`` (R-103.pkl's format) through the safe loader.

The reference is a detectron2 ResNet built here as detectron2's DeepLab project builds R101c (3-conv stem with
norms and ReLUs, max-pool, stride in the 3×3 conv, res5 ``dilation_per_block = [1, 2, 4]`` at stride 2),
at depth 50 for speed (the same stem and block types as depth 101). Its random weights and BatchNorm statistics
are written to a detectron2-format pickle of NumPy arrays; the proposal network built from that file must give
the reference's res2..res5 maps.
"""
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")

from detectron2.layers import Conv2d, get_norm  # noqa: E402
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet  # noqa: E402

from ldvc_d2.config import validate_config  # noqa: E402
from ldvc_d2.modeling.deop.proposals import build_proposal_network  # noqa: E402
from tests.conftest import file_cfg, registered_toy_dataset, tiny_cfg  # noqa: E402

CONFIG = "configs/deop/proposals_shapes.yaml"
SMALL_HEAD = ["MODEL.DEOP.PROPOSAL_NET.NUM_QUERIES", "4", "MODEL.DEOP.PROPOSAL_NET.HIDDEN_DIM", "32",
              "MODEL.DEOP.PROPOSAL_NET.PIXEL_DECODER_DIM", "32", "MODEL.DEOP.PROPOSAL_NET.MASK_DIM", "32",
              "MODEL.DEOP.PROPOSAL_NET.DIM_FEEDFORWARD", "64", "MODEL.DEOP.PROPOSAL_NET.DEC_LAYERS", "1"]


class DeepLabStem(nn.Module):
    """detectron2 projects/DeepLab stem: conv 3→64 s2, 64→64, 64→128 (3×3, no bias, norm, ReLU each), max-pool 3/2."""

    def __init__(self, norm: str = "FrozenBN"):
        super().__init__()
        self.out_channels, self.stride = 128, 4
        self.conv1 = Conv2d(3, 64, 3, stride=2, padding=1, bias=False, norm=get_norm(norm, 64))
        self.conv2 = Conv2d(64, 64, 3, stride=1, padding=1, bias=False, norm=get_norm(norm, 64))
        self.conv3 = Conv2d(64, 128, 3, stride=1, padding=1, bias=False, norm=get_norm(norm, 128))

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu_(conv(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def deeplab_resnet50(multi_grid=(1, 2, 4)) -> ResNet:
    stages, cin, cout, bottleneck = [], 128, 256, 64
    for i, n in enumerate((3, 4, 6, 3)):
        kw = dict(num_blocks=n, stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1), in_channels=cin,
                  out_channels=cout, bottleneck_channels=bottleneck, norm="FrozenBN", stride_in_1x1=False,
                  block_class=BottleneckBlock)
        if i == 3:
            kw["dilation_per_block"] = list(multi_grid)
        stages.append(ResNet.make_stage(**kw))
        cin, cout, bottleneck = cout, cout * 2, bottleneck * 2
    return ResNet(DeepLabStem(), stages, out_features=["res2", "res3", "res4", "res5"])


@pytest.fixture(scope="module")
def reference_pkl(tmp_path_factory):
    torch.manual_seed(0)
    ref = deeplab_resnet50().eval()
    with torch.no_grad():
        for m in ref.modules():  # distinct FrozenBN affine and statistics everywhere
            if type(m).__name__ == "FrozenBatchNorm2d":
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    state = {f"backbone.bottom_up.{k}": v.numpy() for k, v in ref.state_dict().items()}
    state["linear.weight"] = torch.randn(10, 2048).numpy()  # an ImageNet classifier: dropped
    path = tmp_path_factory.mktemp("r101c") / "R-53.pkl"
    with open(path, "wb") as f:  # detectron2 model-zoo format (as R-103.pkl)
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, f)
    return ref, str(path)


def _network(path, *opts):
    with registered_toy_dataset("deop_r101c") as name:
        cfg = tiny_cfg(CONFIG, *SMALL_HEAD, "DATASETS.TRAIN", f"('{name}',)", "MODEL.DEOP.PROPOSAL_NET.BACKBONE",
                       "resnet50s", "MODEL.DEOP.PROPOSAL_NET.FREEZE_BACKBONE_BN", "True",
                       "MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS", path, *opts)
        return build_proposal_network(cfg).eval()


def test_detectron2_pkl_loads_into_the_deep_stem_resnet_and_gives_the_reference_maps(reference_pkl):
    ref, path = reference_pkl
    net = _network(path, "MODEL.DEOP.PROPOSAL_NET.RES5_MULTI_GRID", "[1, 2, 4]")
    backbone = net.maskformer.model.pixel_level_module.encoder._backbone
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        want = ref(x)
        got = backbone(x)
    for name, g in zip(("res2", "res3", "res4", "res5"), got):
        w = want[name]
        assert g.shape == w.shape, name
        assert float((g - w).abs().max()) <= 1e-4 * float(w.abs().max()) + 1e-4, name
    # without the multi-grid dilations res2..res4 are unchanged and res5 is not R101c's
    plain = _network(path, "MODEL.DEOP.PROPOSAL_NET.RES5_MULTI_GRID", "[]")
    with torch.no_grad():
        got_plain = plain.maskformer.model.pixel_level_module.encoder._backbone(x)
    torch.testing.assert_close(got_plain[2], got[2])
    assert float((got_plain[3] - want["res5"]).abs().max()) > 1e-2 * float(want["res5"].abs().max())


def test_resnet101s_is_the_r101c_layout():
    import timm

    net = timm.create_model("resnet101s", pretrained=False)
    stem = [(m.in_channels, m.out_channels, m.stride) for m in net.conv1 if isinstance(m, nn.Conv2d)]
    assert stem == [(3, 64, (2, 2)), (64, 64, (1, 1)), (64, 128, (1, 1))]
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert net.layer2[0].conv1.stride == (1, 1) and net.layer2[0].conv2.stride == (2, 2)  # stride in the 3×3


def test_wrong_backbones_are_refused_naming_the_keys(reference_pkl):
    _, path = reference_pkl
    with pytest.raises(ValueError, match="(?s)BACKBONE_WEIGHTS.*resnet101s"):
        _network(path, "MODEL.DEOP.PROPOSAL_NET.BACKBONE", "resnet50")  # 7×7 stem: the d2 stem does not fit
    with pytest.raises(ValueError, match="RES5_MULTI_GRID"):
        _network("", "MODEL.DEOP.PROPOSAL_NET.BACKBONE", "resnet18", "MODEL.DEOP.PROPOSAL_NET.RES5_MULTI_GRID", "[1, 2, 4]")


def _paper_cfg(name, *opts):
    return file_cfg(f"configs/deop/{name}", *opts)


@pytest.mark.parametrize("name", ["proposals_voc.yaml", "proposals_coco_stuff.yaml",
                                  "proposals_voc_class_agnostic.yaml", "proposals_coco_stuff_class_agnostic.yaml"])
def test_stage2_paper_configs_are_the_released_recipe_and_need_imagenet_weights(name):
    cfg = _paper_cfg(name)
    p, clip = cfg.MODEL.DEOP.PROPOSAL_NET, cfg.SOLVER.CLIP_GRADIENTS
    assert (p.BACKBONE, list(p.RES5_MULTI_GRID), p.BACKBONE_LR_MULTIPLIER) == ("resnet101s", [1, 2, 4], 0.1)
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (True, "full_model", 0.01, 2.0)
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0  # released: no one-class crop retry
    assert (p.CLASS_AGNOSTIC, p.MASK_LOSS_ONLY) == (("class_agnostic" in name),) * 2
    with pytest.raises(ValueError, match=r"MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS is empty.*R-103.pkl"):
        validate_config(cfg, training=True)
    validate_config(_paper_cfg(name, "MODEL.DEOP.PROPOSAL_NET.BACKBONE_WEIGHTS", "/data/R-103.pkl"), training=True)
    validate_config(cfg, training=False)  # evaluation loads MODEL.WEIGHTS instead
