"""The last block of each training-free room (MaskCLIP both forms, SCLIP, ClearCLIP, NACLIP, ProxyCLIP) against a
forward pass written out here from the papers' equations: the tiny random CLIP's blocks 0..L-2 through open_clip,
then the last block from its raw in_proj / out_proj weights, ln_post and proj; compared with the room's dense
features (B×d×h×w, L2-normalised)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ldvc_d2.modeling.proxyclip.vfm import TimmVFM, build_vfm, proxy_attention
from tests.conftest import tiny_cfg


def _model(method, *opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg(f"configs/{method}/shapes.yaml", *opts)).eval()


def _images(h=64, w=64, b=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, h, w, generator=g)


def _softmax(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _last_block_input(tower, images):
    """Tokens entering the last block (B×N×D): conv1, [CLS], positional embedding (native grid), ln_pre, blocks."""
    x = F.conv2d(images, tower.conv1.weight, stride=tower.conv1.stride)
    b, d = x.shape[:2]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([tower.class_embedding.expand(b, 1, d), x], dim=1) + tower.positional_embedding
    x = tower.ln_pre(x)
    for blk in tower.transformer.resblocks[:-1]:
        x = blk(x) if tower.transformer.batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
    return x


def _qkv(blk, x):
    """q, k, v per head (B×H×N×d_h) from the raw in_proj weights of ln_1(x)."""
    ln = blk.ln_1
    z = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    qkv = z @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias
    heads = blk.attn.num_heads
    b, n, d3 = qkv.shape
    q, k, v = qkv.split(d3 // 3, dim=-1)
    return [t.reshape(b, n, heads, -1).permute(0, 2, 1, 3) for t in (q, k, v)]


def _finish(tower, blk, x, per_head, residual, ffn):
    """concat heads, W_o + b_o, optional residual and feed-forward, ln_post, proj; patches -> B×d×h×w normalised."""
    b, heads, n, dh = per_head.shape
    o = per_head.permute(0, 2, 1, 3).reshape(b, n, heads * dh) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
    y = x + o if residual else o
    if ffn:
        ln = blk.ln_2
        y = y + blk.mlp(F.layer_norm(y, ln.normalized_shape, ln.weight, ln.bias, ln.eps))
    y = tower.ln_post(y) @ tower.proj
    side = int(round((n - 1) ** 0.5))
    return F.normalize(y[:, 1:], dim=-1).transpose(1, 2).reshape(b, -1, side, side)


def _reference(model, images, attention, residual, ffn):
    tower = model.visual.visual
    x = _last_block_input(tower, images)
    blk = tower.transformer.resblocks[-1]
    q, k, v = _qkv(blk, x)
    s = q.shape[-1] ** -0.5
    if attention == "identity":  # MaskCLIP: A = I
        out = v
    elif attention == "sclip":  # SCLIP: softmax(s q q^T) + softmax(s k k^T), not renormalised
        out = (_softmax(s * q @ q.transpose(-1, -2)) + _softmax(s * k @ k.transpose(-1, -2))) @ v
    elif attention == "qq":  # ClearCLIP
        out = _softmax(s * q @ q.transpose(-1, -2)) @ v
    elif attention == "naclip":  # NACLIP: k-k plus the Gaussian prior by an explicit double loop over grid positions
        n = q.shape[-2]
        side = int(round((n - 1) ** 0.5))
        omega = torch.zeros(n, n)
        for i in range(side * side):
            for j in range(side * side):
                (yi, xi), (yj, xj) = divmod(i, side), divmod(j, side)
                omega[1 + i, 1 + j] = torch.exp(torch.tensor(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * 5.0 ** 2)))
        out = _softmax(s * k @ k.transpose(-1, -2) + omega) @ v
    elif attention == "nonly":  # NACLIP's prior-only ablation: omega x s * mean over heads, i, j of |q_i| |k_j|, per image
        n = q.shape[-2]
        side = int(round((n - 1) ** 0.5))
        ys, xs = torch.arange(side).repeat_interleave(side).float(), torch.arange(side).repeat(side).float()
        omega = torch.zeros(n, n)
        omega[1:, 1:] = torch.exp(-((ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2) / 50.0)
        outs = []
        for i in range(q.shape[0]):
            c = s * torch.stack([torch.outer(q[i, h].norm(dim=-1), k[i, h].norm(dim=-1)) for h in range(q.shape[1])]).mean()
            outs.append(_softmax(c * omega) @ v[i])
        out = torch.stack(outs)
    else:
        raise ValueError(attention)
    return _finish(tower, blk, x, out, residual, ffn)


@pytest.mark.parametrize("method,opts,attention,residual,ffn", [
    ("maskclip", ("MODEL.MASKCLIP.VARIANT", "harness"), "identity", False, False),
    ("maskclip", ("MODEL.MASKCLIP.VARIANT", "released"), "identity", True, True),
    ("sclip", (), "sclip", True, True),
    ("clearclip", (), "qq", False, False),
    ("naclip", (), "naclip", False, False),
    ("naclip", ("MODEL.NACLIP.ATTENTION", "nonly"), "nonly", False, False),
])
def test_last_block_matches_the_papers_equations(method, opts, attention, residual, ffn):
    model = _model(method, *opts)
    images = _images()
    with torch.no_grad():
        got = model.dense_features(images)
        want = _reference(model, images, attention, residual, ffn)
    assert got.shape == want.shape == (2, model.visual.output_dim, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def _proxy_reference(model, images, feats, beta=1.2, gamma=3.0):
    """ProxyCLIP's proxy attention from VFM features B×C×H'×W': cosine S, γ(S − β·mean over all M² entries), −inf below 0,
    row softmax; CLIP's last-block patch values resized to H'×W'; W_o, ln_post, proj; no residual, no FFN."""
    tower = model.visual.visual
    x = _last_block_input(tower, images)
    blk = tower.transformer.resblocks[-1]
    _, _, v = _qkv(blk, x)
    b, heads, n, dh = v.shape
    side, (hp, wp) = int(round((n - 1) ** 0.5)), feats.shape[-2:]
    outs = []
    for i in range(b):
        g = feats[i].flatten(1)  # C×M
        g = g / g.norm(dim=0, keepdim=True)
        s = g.T @ g
        st = gamma * (s - beta * s.mean())
        e = torch.where(st < 0, torch.zeros_like(st), torch.exp(st - st.max(dim=1, keepdim=True).values))
        a = e / e.sum(dim=1, keepdim=True)
        vi = v[i, :, 1:].transpose(-1, -2).reshape(heads, dh, side, side)
        vi = F.interpolate(vi, size=(hp, wp), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        o = (a[None] @ vi).transpose(0, 1).reshape(hp * wp, heads * dh)
        o = o @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        y = tower.ln_post(o) @ tower.proj
        outs.append(F.normalize(y, dim=-1).T.reshape(-1, hp, wp))
    return torch.stack(outs)


def _tiny_vit():
    torch.manual_seed(3)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=4, depth=2,
                             embed_dim=32, num_heads=2, dynamic_img_size=True, num_classes=0).eval()


def test_proxyclip_with_a_timm_vfm_matches_the_papers_equations():
    model = _model("proxyclip")
    model.vfm = TimmVFM(_tiny_vit())  # a random tiny timm ViT, patch 4: a 16×16 VFM grid over CLIP's 8×8
    images = _images()
    with torch.no_grad():
        got = model.dense_features(images)
        pixels = images * model.pixel_std + model.pixel_mean  # the window's 0-255 RGB pixels
        imagenet = (pixels / 255.0 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        tokens = model.vfm.model.forward_features(imagenet)[:, 1:]  # after the final norm, [CLS] dropped
        feats = tokens.transpose(1, 2).reshape(2, -1, 16, 16)
        want = _proxy_reference(model, images, feats)
    assert got.shape == (2, model.visual.output_dim, 16, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_proxyclip_clip_keys_stand_in_matches_the_equations_on_clip_keys():
    model = _model("proxyclip")
    assert model.vfm is None
    images = _images()
    with torch.no_grad():
        got = model.dense_features(images)
        x = _last_block_input(model.visual.visual, images)
        _, k, _ = _qkv(model.visual.visual.transformer.resblocks[-1], x)
        feats = k[:, :, 1:].permute(0, 1, 3, 2).reshape(2, -1, 8, 8)  # heads concatenated
        want = _proxy_reference(model, images, feats)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_proxy_attention_never_returns_nan_rows():
    feats = torch.ones(1, 4, 2, 2)  # every cosine 1: gamma * (1 - 1.2) < 0 everywhere
    a = proxy_attention(feats, beta=1.2, gamma=3.0)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[0], torch.eye(4))


def test_vfm_weights_load_from_local_files_and_refuse_code(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"model": state}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        vfm = build_vfm("vit_tiny_patch16_224", str(tmp_path / name))
        for k, v in state.items():
            torch.testing.assert_close(vfm.model.state_dict()[k], v)
    torch.save({"model": state, "evil": torch.nn.ReLU()}, tmp_path / "evil.pth")  # a pickled module: refused
    with pytest.raises(Exception, match="holds Python objects"):
        build_vfm("vit_tiny_patch16_224", str(tmp_path / "evil.pth"))
    with pytest.raises(ValueError, match="MODEL.PROXYCLIP.VFM_WEIGHTS"):
        build_vfm("vit_tiny_patch16_224", "")


def test_naclip_kk_needs_no_prior_and_bad_sigma_is_refused():
    model = _model("naclip", "MODEL.NACLIP.ATTENTION", "kk", "MODEL.NACLIP.GAUSSIAN_STD", "0.0")
    images = _images(b=1)
    with torch.no_grad():
        tower = model.visual.visual
        x = _last_block_input(tower, images)
        blk = tower.transformer.resblocks[-1]
        _, k, v = _qkv(blk, x)
        want = _finish(tower, blk, x, _softmax(k.shape[-1] ** -0.5 * k @ k.transpose(-1, -2)) @ v, False, False)
        torch.testing.assert_close(model.dense_features(images), want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="GAUSSIAN_STD"):
        _model("naclip", "MODEL.NACLIP.GAUSSIAN_STD", "0.0")
