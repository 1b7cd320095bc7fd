"""CLIP's text tower built alone (build_clip_text_model): the same text tensors and embeddings as the full
loader from every weight source, and no image tower constructed on the way (C2S inference, seed 003 C13)."""
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from open_clip import transformer

from ldvc_d2.modeling.clip import PromptedTextEncoder, TemplateEnsembleTextEncoder, build_clip_model
from ldvc_d2.modeling.clip.loading import CLIPTextTower, build_clip_text_model
from tests.conftest import registered_toy_dataset, tiny_cfg

NAMES = ["red circle", "green square", "a blue star", "yellow triangle"]


def _text_keys(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("visual.") and k != "logit_scale"}


def _refuse(*args, **kwargs):
    raise RuntimeError("built CLIP's image tower")


@pytest.fixture
def saved_tiny(tmp_path, tiny_clip):
    path = os.path.join(tmp_path, "tiny.pt")
    torch.save(tiny_clip[0].state_dict(), path)
    return tiny_clip[0], path


def test_text_only_equals_the_full_model_on_a_local_checkpoint(saved_tiny):
    full, path = saved_tiny
    tower, tokenizer = build_clip_text_model("LDVC-Tiny", path)
    reference = _text_keys(build_clip_model("LDVC-Tiny", path)[0])
    assert isinstance(tower, CLIPTextTower) and tower.state_dict().keys() == reference.keys()
    assert all(torch.equal(tower.state_dict()[k], v) for k, v in reference.items())
    assert tower.output_dim == full.visual.output_dim and not any(p.requires_grad for p in tower.parameters())
    assert not tower.training
    with torch.no_grad():  # open_clip's own text forward on the full model is the independent computation
        expected = F.normalize(full.encode_text(tokenizer(NAMES)), dim=-1)
        got = PromptedTextEncoder(tower, tokenizer, num_prompts=0, init="template", template="{}")(NAMES)
        torch.testing.assert_close(got, expected)
        ensemble = TemplateEnsembleTextEncoder(tower, tokenizer, templates="vild14")(NAMES)
        torch.testing.assert_close(ensemble, TemplateEnsembleTextEncoder(full, tokenizer, templates="vild14")(NAMES))


def test_text_only_random_init_has_the_full_towers_layout_and_init(tiny_clip):
    """Random init: the image tower's draws come first in the full loader, so the numbers differ at one seed;
    the tensors, the deterministic ones (mask, norms) and the spread of the random ones must agree."""
    full = _text_keys(tiny_clip[0])
    torch.manual_seed(1)
    tower, _ = build_clip_text_model("LDVC-Tiny", "")
    state = tower.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in state.items()} == {k: (v.shape, v.dtype) for k, v in full.items()}
    torch.testing.assert_close(tower.attn_mask, tiny_clip[0].attn_mask)
    for k, v in full.items():
        if v.numel() < 4096 or k.endswith(".bias") or ".ln_" in k:
            continue
        assert not torch.equal(state[k], v), k
        assert abs(state[k].std().item() / v.std().item() - 1) < 0.1, k


def test_text_only_never_constructs_the_image_tower(monkeypatch, saved_tiny):
    _, path = saved_tiny
    monkeypatch.setattr(transformer.VisionTransformer, "__init__", _refuse)
    with pytest.raises(RuntimeError, match="image tower"):  # the patch does catch the full loader
        build_clip_model("LDVC-Tiny", "")
    for weights in ("", path):
        tower, _ = build_clip_text_model("LDVC-Tiny", weights)
        assert not any(isinstance(m, transformer.VisionTransformer) for m in tower.modules())
    with registered_toy_dataset("ldvc_test_toy_text_only") as name:
        cfg = tiny_cfg("configs/c2s/shapes.yaml", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)")
        model = build_model(cfg).eval()
        with torch.no_grad():
            out = model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "class_names": NAMES}])
    assert out[0]["sem_seg"].shape == (len(NAMES), 32, 32)


def test_pretrained_tag_reads_the_downloaded_file_with_the_tags_activation(monkeypatch, saved_tiny):
    from huggingface_hub import constants

    _, path = saved_tiny
    tag_cfg = {"url": "https://example.invalid/tiny.pt", "quick_gelu": True}
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["fake"])
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: tag_cfg if tag == "fake" else {})
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, cache_dir=None: path)
    tower, tokenizer = build_clip_text_model("LDVC-Tiny", "fake")
    with torch.no_grad():
        got = PromptedTextEncoder(tower, tokenizer, num_prompts=0, init="template", template="{}")(NAMES)
        quick = open_clip.create_model("LDVC-Tiny", pretrained=path, force_quick_gelu=True)
        plain = open_clip.create_model("LDVC-Tiny", pretrained=path)
        torch.testing.assert_close(got, F.normalize(quick.encode_text(tokenizer(NAMES)), dim=-1))
        assert not torch.allclose(got, F.normalize(plain.encode_text(tokenizer(NAMES)), dim=-1))

    def offline(cfg, cache_dir=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="'LDVC-Tiny' with pretrained tag 'fake'.*MODEL.CLIP.PRETRAINED"):
        build_clip_text_model("LDVC-Tiny", "fake")


def test_files_of_another_model_are_refused(tmp_path, saved_tiny):
    full, _ = saved_tiny
    state = full.state_dict()
    shallow = {k: v for k, v in state.items() if not k.startswith("visual.transformer.resblocks.3.")}
    no_text = {k: v for k, v in state.items() if not k.startswith("ln_final.")}
    for name, tensors in (("shallow.pt", shallow), ("no_text.pt", no_text)):
        path = str(tmp_path / name)
        torch.save(tensors, path)
        with pytest.raises(RuntimeError, match="MODEL.CLIP.PRETRAINED.*another architecture than 'LDVC-Tiny'"):
            build_clip_text_model("LDVC-Tiny", path)
        with pytest.raises(RuntimeError, match="MODEL.CLIP.PRETRAINED"):  # the full loader refuses it too
            build_clip_model("LDVC-Tiny", path)
