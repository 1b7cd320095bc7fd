"""CLIP weights without internet: a local checkpoint file, or a copied open_clip cache (README, "Offline weights")."""
import os

import open_clip
import pytest
import torch
from detectron2.modeling import build_model

from ldvc_d2.modeling.clip import build_clip_model
from tests.conftest import tiny_cfg


@pytest.fixture(scope="module")
def source():
    """A random LDVC-Tiny CLIP (seed 7), standing in for downloaded weights."""
    torch.manual_seed(7)
    return build_clip_model("LDVC-Tiny", "")[0].state_dict()


def _assert_backbone_holds(model, state):
    """The backbone wraps CLIP's modules: its frozen weights must be the checkpoint's, key by key."""
    clip_params = {**{f"visual.{k}": v for k, v in model.backbone.visual.visual.state_dict().items()},
                   **{k: v for k, v in model.backbone.text.state_dict().items() if k != "prompts"}}
    checked = [k for k in clip_params if k in state]
    assert len(checked) > 40 and "visual.conv1.weight" in checked and "token_embedding.weight" in checked
    for k in checked:
        torch.testing.assert_close(clip_params[k], state[k], msg=k)


@pytest.mark.parametrize("filename,wrap", [("clip.pt", False), ("open_clip_model.bin", True)])
def test_config_loads_a_local_checkpoint_file(tmp_path, source, filename, wrap):
    path = str(tmp_path / filename)
    torch.save({"state_dict": source} if wrap else source, path)
    torch.manual_seed(0)  # a different random init: only loading the file makes the weights equal
    model = build_model(tiny_cfg("configs/demo.yaml", "MODEL.CLIP.PRETRAINED", path))
    _assert_backbone_holds(model, source)
    random = build_model(tiny_cfg())
    assert not torch.equal(random.backbone.visual.visual.conv1.weight, source["visual.conv1.weight"])


def test_config_missing_checkpoint_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt' does not exist"):
        build_model(tiny_cfg("configs/demo.yaml", "MODEL.CLIP.PRETRAINED", str(tmp_path / "nowhere.pt")))


def test_copied_cache_dir_serves_a_pretrained_tag_offline(tmp_path, source, monkeypatch):
    """A tag resolved through the Hugging Face hub cache, as open_clip downloads ViT-B-16 'openai':
    the cache copied to an offline machine is found via MODEL.CLIP.CACHE_DIR."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network: the cache must suffice
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "LDVC-Tiny",
                        {"offlinetest": {"hf_hub": "ldvc-test/ldvc-tiny/", "quick_gelu": False}})
    cache = tmp_path / "clip_weights"
    repo = cache / "models--ldvc-test--ldvc-tiny"
    commit = "0" * 40
    os.makedirs(repo / "snapshots" / commit)
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in source.items()},
              str(repo / "snapshots" / commit / "open_clip_model.safetensors"))
    # what the README's download command prints for the file
    found = open_clip.download_pretrained(open_clip.get_pretrained_cfg("LDVC-Tiny", "offlinetest"), cache_dir=str(cache))
    assert found.endswith("open_clip_model.safetensors") and os.path.isfile(found)
    torch.manual_seed(0)
    model = build_model(tiny_cfg("configs/demo.yaml", "MODEL.CLIP.PRETRAINED", "offlinetest",
                                 "MODEL.CLIP.CACHE_DIR", str(cache)))
    _assert_backbone_holds(model, source)
    model = build_model(tiny_cfg("configs/demo.yaml", "MODEL.CLIP.PRETRAINED", found))  # the file itself
    _assert_backbone_holds(model, source)
