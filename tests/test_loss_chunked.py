"""focal_dice_loss in blocks of (image, class) rows with recomputation against the
full-tensor formula it replaced, written out here: same values and logit gradients to 1e-5."""
import pytest
import torch
import torch.nn.functional as F

from ldvc_d2.modeling import losses


def _full_tensor_reference(logits, targets, ignore_label=255, alpha=0.25, gamma=2.0, ignore_as_negative=True):
    """The previous implementation: every per-pixel term as a B×C×(H·W) tensor."""
    c = logits.shape[1]
    onehot = (targets.unsqueeze(1) == torch.arange(c).view(1, c, 1, 1)).float().flatten(2)
    x = logits.float().flatten(2)
    prob = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    focal_map = (alpha * onehot + (1 - alpha) * (1 - onehot)) * ce * (1 - p_t) ** gamma
    present = onehot.sum(-1) > 0
    num = present.sum().float().clamp(min=1.0)
    if ignore_as_negative:
        focal, p = focal_map.mean(-1).sum() / num, prob
    else:
        weight = (targets != ignore_label).unsqueeze(1).float().flatten(2)
        focal = ((focal_map * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)).sum() / num
        p = prob * weight
    dice = 1 - (2 * (p * onehot).sum(-1) + 1) / (p.sum(-1) + onehot.sum(-1) + 1)
    return 100 * focal, (dice * present).sum() / num


@pytest.mark.parametrize("keep", [0, 2 ** 21])
@pytest.mark.parametrize("chunk", [7, 50, 2 ** 22])
@pytest.mark.parametrize("ignore_as_negative", [True, False])
def test_values_and_gradients_match_the_full_tensor_formula(monkeypatch, chunk, ignore_as_negative, keep):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(losses, "_KEEP_ELEMENTS", keep)  # 0: every block recomputed in the backward
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 6, 5, 7)).requires_grad_()
    targets = torch.randint(0, 6, (3, 5, 7))
    targets[0, :2] = 255  # ignored pixels
    targets[1] = 2  # an image with a single class
    targets[2, 0, 0] = 9  # a value outside [0, C) that is not the ignore label: no class's positive
    new = losses.focal_dice_loss(logits, targets, ignore_as_negative=ignore_as_negative)
    ref = _full_tensor_reference(logits, targets, ignore_as_negative=ignore_as_negative)
    for a, b in zip((new["loss_focal"], new["loss_dice"]), ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    (g_new,) = torch.autograd.grad(new["loss_focal"] + 3 * new["loss_dice"], logits)
    (g_ref,) = torch.autograd.grad(ref[0] + 3 * ref[1], logits)
    torch.testing.assert_close(g_new, g_ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the inference path (no recomputation) gives the same numbers
        plain = losses.focal_dice_loss(logits, targets, ignore_as_negative=ignore_as_negative)
    torch.testing.assert_close(plain["loss_dice"], new["loss_dice"].detach())


def test_backward_keeps_no_full_resolution_terms(monkeypatch):
    """With blocks of one row, the storages saved for backward are the logits, the targets and small
    indices: their total is about the logits' size, not a multiple of it."""
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(losses, "_KEEP_ELEMENTS", 0)
    logits = torch.randn(2, 8, 16, 16, requires_grad=True)
    targets = torch.randint(0, 8, (2, 16, 16))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses.focal_dice_loss(logits, targets)
    assert sum(saved.values()) < 3 * logits.numel() * 4
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _full_tensor_reference(logits, targets)
    assert sum(saved.values()) > 5 * logits.numel() * 4  # the old formula keeps several full-size maps


def test_small_steps_keep_their_terms_large_ones_recompute_with_equal_gradients(monkeypatch):
    """A step with at most _KEEP_ELEMENTS terms runs each block once; a larger one runs them again in the
    backward; the gradients are bitwise those of the other path."""
    torch.manual_seed(1)
    logits = (2 * torch.randn(2, 5, 6, 6)).requires_grad_()
    targets = torch.randint(0, 5, (2, 6, 6))
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 72)  # 2 rows of 36 pixels per block: 5 blocks
    calls = []
    real = losses._row_sums
    monkeypatch.setattr(losses, "_row_sums", lambda *a: calls.append(1) or real(*a))
    grads = {}
    for keep in (logits.numel(), logits.numel() - 1):
        monkeypatch.setattr(losses, "_KEEP_ELEMENTS", keep)
        calls.clear()
        out = losses.focal_dice_loss(logits, targets)
        (grads[keep],) = torch.autograd.grad(out["loss_focal"] + out["loss_dice"], logits)
        assert len(calls) == (5 if keep == logits.numel() else 10)
    assert torch.equal(grads[logits.numel()], grads[logits.numel() - 1])
