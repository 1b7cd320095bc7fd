"""PAMR (modeling/pamr.py) against a direct per-pixel loop of its affinity formula (Araslanov & Roth 2020,
as the released code computes it): replicate borders, unbiased std over the centre + 8 neighbours of every
dilation, a_ij = mean_k(−|I_ik − I_jk| / (1e-8 + 0.1 σ_ik)), softmax over the 8·|D| neighbours, M_i ← Σ_j α_ij M_j."""
import numpy as np
import pytest
import torch

from ldvc_d2.modeling.pamr import PAMR


def _loop_pamr(image: np.ndarray, mask: np.ndarray, dilations, num_iter) -> np.ndarray:
    k, h, w = image.shape
    clamp = lambda y, x: (min(max(y, 0), h - 1), min(max(x, 0), w - 1))  # noqa: E731  replicate padding
    offsets = [(d * dy, d * dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    alpha = np.zeros((h, w, len(offsets)))
    for y in range(h):
        for x in range(w):
            samples = []
            for d in dilations:  # the centre once per dilation, then its 8 neighbours
                samples.append(image[:, y, x])
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if dy or dx:
                            samples.append(image[(slice(None),) + clamp(y + d * dy, x + d * dx)])
            sigma = np.std(np.stack(samples, 1), axis=1, ddof=1)  # per channel
            a = np.array([np.mean(-np.abs(image[:, y, x] - image[(slice(None),) + clamp(y + oy, x + ox)])
                                  / (1e-8 + 0.1 * sigma)) for oy, ox in offsets])
            e = np.exp(a - a.max())
            alpha[y, x] = e / e.sum()
    m = mask.copy()
    for _ in range(num_iter):
        new = np.zeros_like(m)
        for y in range(h):
            for x in range(w):
                for j, (oy, ox) in enumerate(offsets):
                    new[:, y, x] += alpha[y, x, j] * m[(slice(None),) + clamp(y + oy, x + ox)]
        m = new
    return m


@pytest.mark.parametrize("dilations,num_iter", [([1], 1), ([1, 2], 3)])
def test_pamr_equals_the_loop_reference(dilations, num_iter):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 7, 9, generator=g)
    mask = torch.randn(1, 4, 7, 9, generator=g)
    got = PAMR(num_iter, dilations)(image, mask)[0].double().numpy()
    want = _loop_pamr(image[0].double().numpy(), mask[0].double().numpy(), dilations, num_iter)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_pamr_chunks_and_linearity():
    g = torch.Generator().manual_seed(1)
    image, a, b = torch.randn(1, 3, 12, 10, generator=g), torch.randn(1, 5, 12, 10, generator=g), torch.randn(1, 5, 12, 10, generator=g)
    whole, chunked = PAMR(4, [1, 3], chunk=16), PAMR(4, [1, 3], chunk=2)
    torch.testing.assert_close(whole(image, a), chunked(image, a))
    torch.testing.assert_close(whole(image, 2.0 * a + b), 2.0 * whole(image, a) + whole(image, b), rtol=1e-4, atol=1e-5)


def test_pamr_resizes_the_mask_to_the_image():
    image = torch.randn(1, 3, 8, 8)
    assert PAMR(1, [1])(image, torch.randn(1, 2, 4, 4)).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="PAMR_DILATIONS"):
        PAMR(1, [])
