"""DeOP's proposals on the patch grid are computed once per forward and shared by severance (D3) and CAL (D7).

The severance hooks built from the token masks must be exactly the severance they stand for; a DeOP
forward must resize + sigmoid the proposals to the grid once, and hand CAL those very masks.
"""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.modeling.clip.severance import (
    GPS_MODES, MaskGuidedSeverance, PatchSeverance, severance_hooks, token_mask_weights,
)
from ldvc_d2.modeling.clip.surgery import run_block_with_attention
from tests.conftest import registered_toy_dataset, tiny_cfg
from tests.test_surgery import with_random_biases

GRID = (3, 4)


@pytest.fixture(scope="module")
def block_and_tokens(tiny_clip):
    torch.manual_seed(5)
    block = with_random_biases(tiny_clip[0].visual.transformer.resblocks[-1])
    x = torch.randn(2, 1 + GRID[0] * GRID[1], block.attn.embed_dim)
    logits = 4 * torch.randn(2, 5, 13, 17)
    return block, x, logits


@pytest.mark.parametrize("mode", GPS_MODES)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_hooks_from_token_masks_are_the_severance_they_stand_for(block_and_tokens, mode, alpha):
    block, x, logits = block_and_tokens
    masks = token_mask_weights(logits, GRID)
    given = severance_hooks([-1], alpha, mode, token_masks=masks)
    own = {"gps": PatchSeverance(alpha), "mask_weighted": PatchSeverance(alpha, token_weight=masks.sum(dim=1)),
           "mask_guided": MaskGuidedSeverance(masks)}[mode]
    assert [h.layer for h in given] == [-1]
    assert torch.equal(run_block_with_attention(block, x, given[0].attn_fn), run_block_with_attention(block, x, own))


def test_precomputed_token_masks_are_the_ones_used(block_and_tokens):
    """Masks of ones (not those of the logits): w = P for every token, whatever the logits would say."""
    block, x, _ = block_and_tokens
    ones = torch.ones(2, 5, x.shape[1])
    hook = severance_hooks([-1], 1.0, "mask_weighted", token_masks=ones)[0]
    want = run_block_with_attention(block, x, PatchSeverance(1.0, token_weight=torch.full((2, x.shape[1]), 5.0)))
    assert torch.equal(run_block_with_attention(block, x, hook.attn_fn), want)
    with pytest.raises(ValueError, match=r"B×P×\(1\+h·w\)"):
        severance_hooks([-1], 1.0, "mask_guided", token_masks=ones[0])


@pytest.mark.parametrize("mode", GPS_MODES)
def test_a_forward_resizes_the_proposals_to_the_grid_once_and_cal_gets_them(monkeypatch, mode):
    with registered_toy_dataset("ldvc_test_toy_deop_once") as name:
        cfg = tiny_cfg("configs/deop/shapes_oracle.yaml", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST",
                       f"('{name}',)", "MODEL.DEOP.GPS_MODE", mode, "MODEL.DEOP.GPS_LAYERS", "[-2, -1]")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
    p = model.visual.patch_size
    images, masks = torch.randn(2, 3, 6 * p, 5 * p), 4 * torch.randn(2, 16, 24, 20)
    text = F.normalize(torch.randn(3, model.visual.output_dim), dim=-1)
    to_grid, cal_masks = [], []
    interpolate = F.interpolate

    def spy(inp, *args, **kwargs):  # resizes of the proposals to the patch grid (not the final upsampling)
        out = interpolate(inp, *args, **kwargs)
        if inp.shape[:2] == masks.shape[:2] and tuple(out.shape[-2:]) == (6, 5):
            to_grid.append(inp)
        return out

    monkeypatch.setattr(F, "interpolate", spy)
    model.cal.register_forward_hook(lambda module, args, out: cal_masks.append(args[1]))
    with torch.no_grad():
        model.semantic_scores(images, text, masks)
    assert len(to_grid) == 1 and to_grid[0] is masks
    want = interpolate(masks, size=(6, 5), mode="bilinear", align_corners=False).sigmoid().flatten(2)
    assert torch.equal(cal_masks[0], want)
