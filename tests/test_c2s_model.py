"""The C2S meta-architecture: gradients exactly where expected, a teacher only while training,
inference from the student and cached text embeddings (seed 003 §3.4; SEED_SYSTEMS §3.1 C12–C13)."""
import pytest
import torch
from detectron2.modeling import build_model
from open_clip.transformer import VisionTransformer

from ldvc_d2.modeling.c2s import C2S
from tests.conftest import registered_toy_dataset, tiny_cfg

SHAPES = "configs/c2s/shapes.yaml"


@pytest.fixture(scope="module")
def toy_dataset():
    with registered_toy_dataset("ldvc_test_toy_c2s") as name:
        yield name


def _model(dataset, *opts) -> C2S:
    cfg = tiny_cfg(SHAPES, "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
                   "MODEL.C2S.MERGE_THRESHOLD", "0.5", "MODEL.C2S.MIN_CLUSTER", "2", "MODEL.C2S.DECODER_DROPOUT", "0.0",
                   *opts)
    torch.manual_seed(0)
    return build_model(cfg)


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
              "sem_seg": torch.randint(0, 5, (size, size), generator=g)} for _ in range(n)]
    for x in batch:
        x["sem_seg"][: size // 2] = 2  # an unseen class: the latent area mining clusters
    return batch


def _has_image_tower(model) -> bool:
    return any(isinstance(m, VisionTransformer) for m in model.modules())


def test_training_step_changes_the_student_and_decoder_only(toy_dataset):
    model = _model(toy_dataset)
    model.train()
    teacher = model.teacher
    teacher_before = {n: p.clone() for n, p in teacher.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = model(_batch())
    assert set(losses) == {"loss_global", "loss_local", "loss_ce", "loss_focal", "loss_dice"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"student", "latent_decoder"}
    assert changed <= trainable and any(n.startswith("latent_decoder.") for n in changed)
    assert any(n.startswith("student.model.segformer.") for n in changed)
    assert all(model.get_parameter(n).grad is None for n in before if n.startswith("text."))
    assert all(torch.equal(p, teacher_before[n]) and p.grad is None for n, p in teacher.named_parameters())
    assert int(model.bank.count) == 2
    assert not any(k.startswith("teacher") or k.startswith("_teacher") for k in model.state_dict())


def test_ablation_switches_choose_the_losses(toy_dataset):
    baseline = _model(toy_dataset, "MODEL.C2S.GLOBAL_DISTILL", "False", "MODEL.C2S.LOCAL_DISTILL", "False",
                      "MODEL.C2S.LATENT_EMBEDDINGS", "False").train()
    assert baseline.latent_decoder is None
    assert set(baseline(_batch())) == {"loss_ce", "loss_focal", "loss_dice"}
    assert not baseline._teacher_slot  # the seen-only baseline never builds CLIP's image tower
    distill = _model(toy_dataset, "MODEL.C2S.LATENT_EMBEDDINGS", "False").train()
    assert set(distill(_batch())) == {"loss_global", "loss_local", "loss_ce", "loss_focal", "loss_dice"}


def test_inference_is_softmax_of_alpha_student_text_without_any_image_tower(toy_dataset, monkeypatch):
    trained = _model(toy_dataset).train()
    trained(_batch())  # builds the teacher, fills the bank
    scores = {}
    for beta in ("3.0", "7.0"):  # latent logits (beta) exist only in training: the scores ignore beta
        model = _model(toy_dataset, "MODEL.SEGMENTOR.INFERENCE.MODE", "whole", "MODEL.C2S.ALPHA", "2.5",
                       "MODEL.C2S.BETA", beta).for_inference()
        model.load_state_dict(trained.state_dict(), strict=True)  # training-only tensors skipped, none missing
        model.eval()
        monkeypatch.setattr(VisionTransformer, "forward", lambda *a, **k: pytest.fail("CLIP image tower ran"))
        image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        out = model([{"image": image, "height": 32, "width": 48}])[0]["sem_seg"]
        assert out.shape == (5, 32, 48)
        assert not model._teacher_slot and not _has_image_tower(model) and len(model._text_cache) == 1
        scores[beta] = model([{"image": image}])[0]["sem_seg"]
        # C13 by hand: softmax over classes of bilinear(2.5 * F^T A), F the student's, A the text embeddings
        feats = model.student(model.preprocess(image))
        text = model.text(list(model.test_class_names))
        logits = torch.nn.functional.interpolate(2.5 * torch.einsum("bdhw,cd->bchw", feats, text), size=(64, 96),
                                                 mode="bilinear", align_corners=False)
        torch.testing.assert_close(scores[beta], logits[0].softmax(0), rtol=1e-4, atol=1e-5)
        monkeypatch.undo()
    torch.testing.assert_close(scores["3.0"], scores["7.0"])
    assert "no CLIP image tower" in C2S.describe_protocol(tiny_cfg(SHAPES))


def test_region_tokens_see_only_their_region_and_batch_like_one_by_one():
    from ldvc_d2.modeling.c2s import CLIPTeacher

    torch.manual_seed(0)
    teacher = CLIPTeacher("LDVC-Tiny", "", global_size=0, crop_size=32)
    images = torch.randn(2, 3, 48, 64)
    masks = torch.zeros(3, 48, 64, dtype=torch.bool)
    masks[0, 8:24, 8:40] = True
    masks[0, 8:16, 8:16] = False  # a hole inside the box
    masks[1, 30:48, 0:20] = True
    masks[2, :, 32:] = True
    index = torch.tensor([0, 0, 1])
    tokens = teacher.region_tokens(images, masks, index)
    assert tokens.shape == (3, 128)
    one_by_one = torch.cat([teacher.region_tokens(images, masks[i:i + 1], index[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(tokens, one_by_one, rtol=1e-5, atol=1e-5)
    outside = images.clone()
    outside[0, :, 8:16, 8:16] += 5.0  # in region 0's box, outside its mask
    outside[0, :, 40:, 50:] += 5.0  # outside every region of image 0
    torch.testing.assert_close(teacher.region_tokens(outside, masks, index), tokens, rtol=1e-5, atol=1e-5)
    inside = images.clone()
    inside[0, :, 20:24, 30:40] += 5.0
    assert not torch.allclose(teacher.region_tokens(inside, masks, index)[0], tokens[0], atol=1e-3)
    out = teacher.encode(images)
    assert out["dense"].shape == (2, 128, 6, 8) and out["global"].shape == (2, 128)
