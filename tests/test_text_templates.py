"""Prompt-template sets and the template-ensemble text encoder (CLIPtrase T4)."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from ldvc_d2.modeling.clip import TEMPLATE_SETS, TemplateEnsembleTextEncoder, resolve_templates


def test_template_sets():
    imagenet, vild = TEMPLATE_SETS["imagenet80"], TEMPLATE_SETS["vild14"]
    assert len(imagenet) == 80 and len(set(imagenet)) == 80
    assert len(vild) == 14 and len(set(vild)) == 14
    assert all(t.count("{}") == 1 for t in imagenet + vild)
    assert list(imagenet) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]  # open_clip's copy of OpenAI's list


def test_resolve_templates_errors():
    assert resolve_templates(["a {}.", "the {}"]) == ["a {}.", "the {}"]
    with pytest.raises(ValueError, match="Unknown template set 'imagenet'"):
        resolve_templates("imagenet")
    with pytest.raises(ValueError, match="exactly once"):
        resolve_templates(["a photo of a {}.", "a {} and a {}"])
    with pytest.raises(ValueError, match="exactly once"):
        resolve_templates(["no slot"])
    with pytest.raises(ValueError, match="empty"):
        resolve_templates([])


def test_ensemble_equals_manual_mean(tiny_clip):
    model, tokenizer = tiny_clip
    templates = ["a photo of a {}.", "there is a {} in the scene", "{}", "a blurry photo of the {}."]
    names = ["red circle", "sky", "traffic light"]
    with torch.no_grad():
        per_template = torch.stack([
            F.normalize(model.encode_text(tokenizer([t.format(c) for t in templates])), dim=-1) for c in names
        ])
        want = F.normalize(per_template.mean(1), dim=-1)
        got = TemplateEnsembleTextEncoder(model, tokenizer, templates=templates)(names)
        chunked = TemplateEnsembleTextEncoder(model, tokenizer, templates=templates, chunk_size=5)(names)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, got, rtol=0, atol=1e-6)


def test_ensemble_named_set_and_errors(tiny_clip):
    model, tokenizer = tiny_clip
    enc = TemplateEnsembleTextEncoder(model, tokenizer, templates="vild14")
    assert enc.templates == list(TEMPLATE_SETS["vild14"])
    with torch.no_grad():
        assert enc(["cat", "dog"]).shape == (2, model.text_projection.shape[1])
    with pytest.raises(ValueError, match="exactly once"):
        TemplateEnsembleTextEncoder(model, tokenizer, templates=["a {} {}"])
    with pytest.raises(ValueError, match="empty"):
        enc([])
