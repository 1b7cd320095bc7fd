"""C2S students start from the paper's ImageNet weights: the paper configs name them, training refuses to start
without them, and local files load through the safe loaders (seed 003 §4; docs/c2s.md "Students")."""
import glob
import os
import pickle

import pytest
import torch

from ldvc_d2.checkpoint import CheckpointLoadError
from ldvc_d2.config import validate_config
from ldvc_d2.modeling.c2s.students import build_student
from tests.conftest import REPO, file_cfg, tiny_cfg

PAPER = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs/c2s/*_*.yaml"))
               if "shapes" not in p)


@pytest.mark.parametrize("config", PAPER)
def test_paper_configs_name_imagenet_weights_and_training_refuses_without(config):
    cfg = file_cfg(config)
    expected = {"segformer_b4": "nvidia/mit-b4", "setr_b": "vit_base_patch16_384.orig_in21k_ft_in1k"}
    assert cfg.MODEL.C2S.STUDENT_WEIGHTS == expected[cfg.MODEL.C2S.STUDENT]
    assert not cfg.MODEL.C2S.ALLOW_RANDOM_STUDENT
    validate_config(cfg, training=True)
    cfg.MODEL.C2S.STUDENT_WEIGHTS = ""
    with pytest.raises(ValueError) as err:
        validate_config(cfg, training=True)
    message = str(err.value)
    assert "MODEL.C2S.STUDENT_WEIGHTS" in message and "MODEL.C2S.ALLOW_RANDOM_STUDENT" in message
    assert expected[cfg.MODEL.C2S.STUDENT] in message
    validate_config(cfg, training=False)  # evaluation loads MODEL.WEIGHTS instead
    for key, value in (("MODEL.WEIGHTS", "output/c2s/model_final.pth"), ("MODEL.C2S.ALLOW_RANDOM_STUDENT", True)):
        ok = cfg.clone()
        ok.merge_from_list([key, value])
        validate_config(ok, training=True)


def test_shapes_configs_allow_random_students():
    for config in glob.glob(os.path.join(REPO, "configs/c2s/shapes*.yaml")):
        cfg = tiny_cfg(os.path.relpath(config, REPO))
        assert cfg.MODEL.C2S.ALLOW_RANDOM_STUDENT
        validate_config(cfg, training=True)


def _tiny_vit(img_size: int, num_classes: int):
    import timm

    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, num_classes=num_classes,
                             patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_setr_local_file_loads_safely_with_resampled_position_embeddings(tmp_path, suffix):
    from timm.layers import resample_abs_pos_embed

    vit = _tiny_vit(32, 10)  # a 4x4 grid and an ImageNet-style classifier
    saved = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    path = str(tmp_path / f"vit{suffix}")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(saved, path)
    else:
        torch.save({"model": saved, "epoch": 3}, path)
    student = build_student("setr_tiny", 16, weights=path, img_size=64, drop_path=0.0)
    got = student.vit.state_dict()
    assert not any(k.startswith("head.") and got[k].numel() for k in got)  # classifier dropped
    for k, v in saved.items():
        if k == "pos_embed":
            torch.testing.assert_close(got[k], resample_abs_pos_embed(v, (8, 8), num_prefix_tokens=1))
        elif not k.startswith("head."):
            assert torch.equal(got[k], v), k
    assert got["pos_embed"].shape == (1, 65, 32)


def test_setr_local_file_that_runs_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises((RuntimeError, CheckpointLoadError), match="MODEL.C2S.STUDENT_WEIGHTS|not an allowed|unsafe"):
        build_student("setr_tiny", 16, weights=str(path), img_size=64, drop_path=0.0)


def test_segformer_folder_of_a_mit_encoder_loads_strictly(tmp_path):
    import transformers

    torch.manual_seed(2)
    config = transformers.SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64],
                                          num_attention_heads=[1, 1, 2, 4], sr_ratios=[8, 4, 2, 1])
    encoder = transformers.SegformerModel(config)
    encoder.save_pretrained(tmp_path / "mit")
    student = build_student("segformer_tiny", 16, weights=str(tmp_path / "mit"), drop_path=0.0)
    mine = student.model.segformer.state_dict()
    assert set(mine) == set(encoder.state_dict())
    assert all(torch.equal(mine[k], v) for k, v in encoder.state_dict().items())
    wrong = transformers.SegformerModel(transformers.SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 2], hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 4]))
    wrong.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="MODEL.C2S.STUDENT"):
        build_student("segformer_tiny", 16, weights=str(tmp_path / "other"))
