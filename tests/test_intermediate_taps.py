"""The intermediate features V_j of eq. (4) against forward hooks on the open_clip blocks themselves.

The reference reads the output of each chosen ``resblocks[j]`` with a PyTorch forward hook, drops the
deep prompts (first ``num_prompts`` tokens, VPT-deep order) and the [CLS] token, and reshapes the patch
tokens row-major to the h×w grid; the MODEL.LDVC.INTERMEDIATE_NORM variants are written with functional
ops (``F.layer_norm``, the L2 norm by hand). A non-square input catches a transposed grid.
"""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.modeling.backbone import PromptedCLIPBackbone
from ldvc_d2.modeling.clip.surgery import BlockHook
from tests.conftest import tiny_cfg

PROMPTS, H, W = 3, 48, 64  # tiny CLIP: patch 8 -> a 6x8 grid, width 128, 4 blocks


def _block_outputs(blocks, run):
    """Output of every block in ``blocks`` (B×L×width, batch first) during ``run()``."""
    outputs = {}
    handles = [b.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out.detach().clone()))
               for i, b in enumerate(blocks)]
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return outputs, result


def _reference_tap(block_out, num_prompts, h, w):
    patches = block_out[:, num_prompts + 1:]  # prompts first, then [CLS], then the h·w patch tokens
    assert patches.shape[1] == h * w
    return patches.reshape(block_out.shape[0], h, w, -1).permute(0, 3, 1, 2)


def _backbone(norm, layers=(1, 2)):
    torch.manual_seed(0)
    return PromptedCLIPBackbone(clip_model="LDVC-Tiny", clip_pretrained="", visual_prompts=PROMPTS, text_prompts=0,
                                intermediate_layers=list(layers), intermediate_norm=norm).eval()


@pytest.mark.parametrize("layers", [(1, 2), (0, 3), (2,)])
def test_raw_taps_are_the_patch_tokens_after_the_chosen_blocks(layers):
    backbone = _backbone("none", layers)
    images = torch.randn(2, 3, H, W)
    with torch.no_grad():
        outputs, out = _block_outputs(backbone.visual.visual.transformer.resblocks, lambda: backbone(images))
    assert len(out["intermediate"]) == len(layers)
    for j, tap in zip(layers, out["intermediate"]):
        assert outputs[j].shape == (2, PROMPTS + 1 + 48, 128)
        torch.testing.assert_close(tap, _reference_tap(outputs[j], PROMPTS, H // 8, W // 8))


def test_taps_are_unchanged_by_a_block_hook_on_a_tapped_layer():
    """The hooked-block path (a q/k/v tap on block 1) runs the same prompted block as the plain loop."""
    backbone = _backbone("none")
    images = torch.randn(1, 3, H, W)
    hook = BlockHook(layer=1, tap=lambda q, k, v: q.mean(), name="q_mean")
    with torch.no_grad():
        plain = backbone(images)["intermediate"]
        outputs, hooked = _block_outputs(backbone.visual.visual.transformer.resblocks,
                                         lambda: backbone.visual(images, hooks=[hook]))
    for j, ref, tap in zip((1, 2), plain, hooked["intermediate"]):
        torch.testing.assert_close(tap, ref)
        torch.testing.assert_close(tap, _reference_tap(outputs[j], PROMPTS, H // 8, W // 8))


@pytest.mark.parametrize("norm", ["l2", "ln_post", "learnable"])
def test_intermediate_norms_over_the_width(norm):
    backbone = _backbone(norm)
    if norm == "learnable":  # one LayerNorm per tap; distinct random values so that a swapped norm shows
        for ln in backbone.intermediate_norms:
            torch.nn.init.normal_(ln.weight)
            torch.nn.init.normal_(ln.bias)
    images = torch.randn(2, 3, H, W)
    with torch.no_grad():
        outputs, out = _block_outputs(backbone.visual.visual.transformer.resblocks, lambda: backbone(images))
    ln_post = backbone.visual.visual.ln_post
    for k, (j, tap) in enumerate(zip((1, 2), out["intermediate"])):
        raw = _reference_tap(outputs[j], PROMPTS, H // 8, W // 8).permute(0, 2, 3, 1)  # B×h×w×width
        if norm == "l2":
            ref = raw / raw.pow(2).sum(-1, keepdim=True).sqrt()
        else:
            ln = ln_post if norm == "ln_post" else backbone.intermediate_norms[k]
            ref = F.layer_norm(raw, (raw.shape[-1],), ln.weight, ln.bias, ln.eps)
        torch.testing.assert_close(tap, ref.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_ldvc_default_taps_run_from_the_middle_block_to_the_last():
    """LDVC with 2 LCTD blocks on the 4-block tiny CLIP taps blocks 2 and 3 (the middle and the last), each
    LCTD block its own; the demo config's V_j norm is "learnable" (randomised here)."""
    cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()")
    assert cfg.MODEL.LDVC.LCTD.NUM_BLOCKS == 2 and not cfg.MODEL.LDVC.INTERMEDIATE_LAYERS
    model = build_model(cfg).eval()
    backbone = model.backbone
    norms = backbone.intermediate_norms
    for ln in norms:
        torch.nn.init.normal_(ln.weight)
        torch.nn.init.normal_(ln.bias)
    images = torch.randn(1, 3, H, W)
    n = cfg.MODEL.CLIP.VISUAL_PROMPTS
    with torch.no_grad():
        outputs, out = _block_outputs(backbone.visual.visual.transformer.resblocks, lambda: backbone(images))
    for k, j in enumerate((2, 3)):
        raw = _reference_tap(outputs[j], n, H // 8, W // 8).permute(0, 2, 3, 1)
        ref = F.layer_norm(raw, (raw.shape[-1],), norms[k].weight, norms[k].bias, norms[k].eps)
        torch.testing.assert_close(out["intermediate"][k], ref.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)
