"""LCTDHead's return_attention (eq. 6 cross-attention weights) and tools/visualize_attention.py."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from PIL import Image

from ldvc_d2.modeling.ldvc import LCTDHead, LocalConsensusSelfAttention
from tests.conftest import REPO, tiny_cfg
from tests.scripts import load_script


def _head_and_inputs(topk):
    torch.manual_seed(0)
    head = LCTDHead(dim=16, intermediate_dim=12, num_blocks=2, num_heads=4, window_size=2, topk=topk)
    for block in head.blocks:  # zero-initialised by design; make eq. (4) contribute
        torch.nn.init.normal_(block.skip.weight, std=0.1)
    features = {"dense": F.normalize(torch.randn(2, 16, 8, 6), dim=1), "global": F.normalize(torch.randn(2, 16), dim=-1),
                "intermediate": [torch.randn(2, 12, 8, 6) for _ in range(2)]}
    return head.eval(), features, F.normalize(torch.randn(5, 16), dim=-1)


@pytest.mark.parametrize("topk", [2, None])
def test_attention_shapes_sum_to_one_and_leave_logits_unchanged(topk):
    head, features, text = _head_and_inputs(topk)
    with torch.no_grad():
        plain = head(features, text)
        logits, attentions = head(features, text, return_attention=True)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    assert len(attentions) == 2
    for a in attentions:
        assert a.shape == (2, 5, 8, 6)
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(dim=1), torch.ones(2, 8, 6))
    assert not torch.allclose(attentions[0], attentions[1])


def test_attention_is_the_head_averaged_softmax_over_classes_of_block_one():
    """Recompute block 0's cross-attention by hand: q from the image tokens after eqs. (4)-(5), k from the
    classes, softmax over classes per head, mean over heads."""
    head, features, text = _head_and_inputs(2)
    block, heads = head.blocks[0], 4
    with torch.no_grad():
        _, attentions = head(features, text, return_attention=True)
        t_new = head.adapt_text(text, features["global"])  # eq. (3)
        v = features["dense"].flatten(2).transpose(1, 2)
        v = v + block.skip(features["intermediate"][0]).flatten(2).transpose(1, 2)  # (4)
        v = v + block.self_attn(block.norm_sa(v), 8, 6)  # (5)
        wq, wk, _ = block.cross_attn.in_proj_weight.chunk(3)
        bq, bk, _ = block.cross_attn.in_proj_bias.chunk(3)
        q = F.linear(block.norm_q(v), wq, bq).view(2, 48, heads, 4).transpose(1, 2)  # B×H×L×hd
        k = F.linear(block.norm_kv(t_new), wk, bk).view(2, 5, heads, 4).transpose(1, 2)  # B×H×C×hd
        ref = (q @ k.transpose(-1, -2) / 2.0).softmax(dim=-1).mean(dim=1)  # B×L×C
    torch.testing.assert_close(attentions[0], ref.transpose(1, 2).reshape(2, 5, 8, 6), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/visualize_attention.py")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(tiny_cfg()).eval()
    for block in m.sem_seg_head.blocks:
        torch.nn.init.normal_(block.skip.weight, std=0.2)  # make LCSA's routing matter for the maps
    return m


def test_tool_maps_lcsa_on_and_off(tool, model):
    names = ["plain red shape", "striped blue shape", "dotted green shape"]
    image = torch.randint(0, 256, (3, 128, 96), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    blocks = tool.attention_blocks(model, image, names, block=-1, mode="both", topk=2)
    assert [label for label, _ in blocks] == ["LCSA on (top-2 windows)", "LCSA off (global self-attention)"]
    for _, maps in blocks:
        assert maps.shape == (3, 128, 96)
        torch.testing.assert_close(maps.sum(dim=0), torch.ones(128, 96))
    assert not torch.allclose(blocks[0][1], blocks[1][1])  # 2 of 12 windows vs all: different routing
    assert all(m.topk == 4 for m in model.modules() if isinstance(m, LocalConsensusSelfAttention))  # restored
    first = tool.attention_blocks(model, image, names, block=0, mode="global", topk=2)
    assert len(first) == 1 and not torch.allclose(first[0][1], blocks[1][1])


def test_tool_rejects_a_head_without_return_attention(tool, model):
    class PlainHead(torch.nn.Module):
        def forward(self, features, text):
            return features["dense"]

    original = model.sem_seg_head
    model.sem_seg_head = PlainHead()
    try:
        with pytest.raises(TypeError, match="PlainHead has no 'return_attention'"):
            tool.attention_maps(model, torch.zeros(3, 64, 64, dtype=torch.uint8), ["a"])
    finally:
        model.sem_seg_head = original


def test_tool_writes_the_grid_png(tool, tmp_path, monkeypatch):
    """The PNG is the grid drawn from the test-resized photo (short side 128, bilinear, checked against PIL)
    and, per block (LCSA on, LCSA off), three attention maps at that size summing to 1 over the classes."""
    rgb = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    image = tmp_path / "photo.png"
    Image.fromarray(rgb).save(image)
    out = tmp_path / "out"
    out.mkdir()
    drawn = []
    draw = tool.draw_map_grid
    monkeypatch.setattr(tool, "draw_map_grid", lambda *a, **kw: drawn.append((a, kw)) or draw(*a, **kw))
    rc = tool.main(["--config-file", os.path.join(REPO, "configs/demo.yaml"), "--input", str(image),
                    "--classes", "red,green,blue", "--output", str(out),
                    "--opts", "MODEL.CLIP.PRETRAINED", ""])
    assert rc == 0
    assert os.listdir(out) == ["photo_attention.png"]
    ((shown, blocks, titles), kw), = drawn
    resized = np.asarray(Image.fromarray(rgb).resize((165, 128), Image.BILINEAR))  # 90 * 128 / 70 = 164.6
    assert shown.shape == (128, 165, 3) and np.abs(shown.astype(int) - resized).max() <= 1
    assert titles == ["red", "green", "blue"] and [label for label, _ in blocks][1].startswith("LCSA off")
    for _, maps in blocks:
        assert maps.shape == (3, 128, 165) and maps.std() > 1e-3
        np.testing.assert_allclose(maps.sum(0), 1.0, atol=1e-5)
    assert kw["vmin"] == 0.0 and kw["vmax"] == pytest.approx(max(m.max() for _, m in blocks))
    with Image.open(out / "photo_attention.png") as grid:
        assert grid.mode == "RGB"
        assert np.array_equal(np.asarray(grid), draw(shown, blocks, titles, **kw))  # the file is that picture


def test_tool_works_with_the_zegclip_head(tool):
    """The baseline head implements the same return_attention interface: one block, one map per class."""
    cfg = tiny_cfg("configs/shapes/zegclip.yaml")
    torch.manual_seed(0)
    zegclip = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 64, 80), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    per_layer = tool.attention_maps(zegclip, image, ["red", "blue"])
    assert len(per_layer) == cfg.MODEL.ZEGCLIP.NUM_LAYERS and all(m.shape == (2, 64, 80) for m in per_layer)
    blocks = tool.attention_blocks(zegclip, image, ["red", "blue"], block=-1, mode="both", topk=2)
    assert [label for label, _ in blocks] == ["ZegCLIPHead"]
    torch.testing.assert_close(blocks[0][1], per_layer[-1])
