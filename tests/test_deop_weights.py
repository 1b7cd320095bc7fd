"""DeOP's one checkpoint reader (modeling/deop/weight_files.py ``read_state_dict``) and the allowed values that the
config check and the constructors share (one tuple each: MASK_FILLS, GPS_MODES, PROPOSAL_SOURCES)."""
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from ldvc_d2.config import validate_config
from ldvc_d2.modeling.deop.config import MASK_FILLS, PROPOSAL_SOURCES, deop_config_problems
from ldvc_d2.modeling.clip.severance import GPS_MODES, severance_hooks
from ldvc_d2.modeling.deop.proposals.build import load_backbone_weights
from ldvc_d2.modeling.deop.weight_files import read_state_dict
from ldvc_d2.modeling.deop.weights import load_text_context
from tests.conftest import registered_toy_dataset, tiny_cfg


def _backbone() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 4, 3))
    net.add_module("bn1", nn.BatchNorm2d(4))
    return net


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_backbone_weights_are_unwrapped_and_lose_the_classifier(tmp_path, wrap):
    source = _backbone()
    with torch.no_grad():
        for value in source.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    state = {**source.state_dict(), "fc.weight": torch.ones(2, 4)}  # the ImageNet classifier, dropped
    path = str(tmp_path / "r.pth")
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    target = _backbone()
    load_backbone_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_stage_checkpoints_unwrap_model_only(tmp_path):
    state = {"text.ctx": torch.arange(6.0).reshape(2, 3)}
    path = str(tmp_path / "stage1.pth")
    torch.save({"model": state, "iteration": 9}, path)
    assert read_state_dict(path, "MODEL.DEOP.TEXT_PROMPT_WEIGHTS").keys() == state.keys()
    torch.save({"state_dict": state}, path)  # not a detectron2 checkpoint: read as it is
    assert list(read_state_dict(path, "MODEL.DEOP.TEXT_PROMPT_WEIGHTS")) == ["state_dict"]
    text = nn.Module()
    text.ctx = nn.Parameter(torch.zeros(2, 3))
    torch.save({"model": state}, path)
    load_text_context(text, path)
    assert torch.equal(text.ctx.detach(), state["text.ctx"])


def test_reader_errors_name_the_key_the_file_and_what_to_give(tmp_path):
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=r"MODEL.DEOP.PROPOSAL_WEIGHTS '.*missing.pth' is not a file; give the "
                                                r"checkpoint \(model_final.pth\) of the earlier DeOP stage"):
        read_state_dict(missing, "MODEL.DEOP.PROPOSAL_WEIGHTS")
    with pytest.raises(FileNotFoundError, match="BACKBONE_WEIGHTS '.*missing.pth' is not a file; give a local"):
        load_backbone_weights(_backbone(), missing)
    tensor = str(tmp_path / "tensor.pth")
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="BACKBONE_WEIGHTS '.*tensor.pth' holds a Tensor, not a state dict; give"):
        load_backbone_weights(_backbone(), tensor)
    with pytest.raises(ValueError, match="TEXT_PROMPT_WEIGHTS '.*tensor.pth' holds a Tensor"):
        read_state_dict(tensor, "MODEL.DEOP.TEXT_PROMPT_WEIGHTS")


def test_config_check_and_severance_accept_the_same_gps_modes():
    cfg = tiny_cfg("configs/deop/shapes_oracle.yaml")
    for mode in GPS_MODES:
        cfg.MODEL.DEOP.GPS_MODE = mode
        assert not [p for p in deop_config_problems(cfg, training=False) if "GPS_MODE" in p]
        assert len(severance_hooks([-1], 1.0, mode, token_masks=torch.ones(1, 2, 5))) == 1
    cfg.MODEL.DEOP.GPS_MODE = "soft"
    assert [p for p in deop_config_problems(cfg, training=False) if "GPS_MODE" in p and all(m in p for m in GPS_MODES)]
    with pytest.raises(ValueError, match="GPS_MODE"):
        severance_hooks([-1], 1.0, "soft")
    for source in PROPOSAL_SOURCES:
        cfg.MODEL.DEOP.PROPOSALS = source
        assert not [p for p in deop_config_problems(cfg, training=False) if "PROPOSALS is" in p]


def test_config_check_and_prompt_learner_accept_the_same_mask_fills():
    with registered_toy_dataset("deop_mask_fill_toy") as name:
        for fill in (*MASK_FILLS, "soft"):
            cfg = tiny_cfg("configs/deop/stage1_shapes.yaml", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
                           "MODEL.DEOP.PROMPT_LEARNING.MASK_FILL", fill)
            if fill in MASK_FILLS:
                assert not deop_config_problems(cfg, training=False)
                assert build_model(cfg).mask_fill == fill
                continue
            with pytest.raises(ValueError, match="MASK_FILL is 'soft'; use one of \\['mean', 'none'\\]"):
                validate_config(cfg, training=False)
            with pytest.raises(ValueError, match="MASK_FILL must be one of \\['mean', 'none'\\], got 'soft'"):
                build_model(cfg)
