"""colorize_core.hints: hints painted from manifests, simulated for training as SIGGRAPH17 did, and sampled
deterministically from originals for evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from colorize_core import color
from colorize_core.hints import HintSimulation, paint_hints, sample_hints, simulate_hints

def test_simulated_hints_follow_the_paper():
    """Geometric counts (P(0) = p), patches of 1-9 px revealing the patch's mean ab, positions around the
    centre, and whole batches without any hint at the configured rate."""
    rng = np.random.default_rng(0)
    ab = torch.from_numpy(np.random.default_rng(1).normal(0, 30, (4, 2, 64, 96)).astype(np.float32))
    sim = HintSimulation(p=1 / 8, hint_free_batches=0.3)
    free, masks = 0, []
    for _ in range(300):
        hint, mask = simulate_hints(ab, rng, sim)
        assert hint.shape == ab.shape and mask.shape == (4, 1, 64, 96)
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
        assert torch.all(hint[mask.expand_as(hint) == 0] == 0)
        if mask.sum() == 0:
            free += 1
        else:
            masks.append(mask)
    assert 0.2 < free / 300 < 0.4
    stacked = torch.cat(masks)[:, 0]
    assert 0.05 < (stacked.sum(dim=(1, 2)) == 0).float().mean() < 0.25  # P(no point) = p = 1/8 per image
    rows, cols = stacked.sum(dim=(0, 2)), stacked.sum(dim=(0, 1))
    assert rows[24:40].mean() > 2 * rows[:8].mean() and cols[40:56].mean() > 2 * cols[:8].mean()  # near the centre

    # One patch: its colour is the mean of the ground truth over it.
    one = HintSimulation(p=0.5, patch=(4, 4), hint_free_batches=0.0)
    for seed in range(20):
        hint, mask = simulate_hints(ab[:1], np.random.default_rng(seed), one)
        if mask.sum() == 16:  # exactly one 4x4 patch
            ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
            patch = ab[0, :, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            assert torch.allclose(hint[0, :, ys[0], xs[0]], patch.mean(dim=(1, 2)), atol=1e-4)
            break
    else:
        pytest.fail("no draw with exactly one patch")
    with pytest.raises(ValueError, match="patch"):
        HintSimulation(patch=(0, 9))


def test_sampled_hints_are_deterministic_per_image_and_take_the_originals_colour():
    rng = np.random.default_rng(0)
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[:, :200] = (200, 40, 40)  # red left half, blue right half
    rgb[:, 200:] = (40, 60, 210)
    rgb[:5, :5] = rng.integers(0, 256, (5, 5, 3))
    a = sample_hints(rgb, 10, "box1/p001", size=(192, 192), radius=2)
    assert a == sample_hints(rgb, 10, "box1/p001", size=(192, 192), radius=2)
    assert a != sample_hints(rgb, 10, "box1/p002", size=(192, 192), radius=2)
    assert a != sample_hints(rgb, 10, "box1/p001", size=(192, 192), radius=2, seed=1)
    assert len(a) == 10 and all(0 <= h["x"] <= 1 and 0 <= h["y"] <= 1 for h in a)
    red, blue = color.srgb_to_lab(rgb[:1, :1] * 0 + np.uint8([200, 40, 40])), \
        color.srgb_to_lab(rgb[:1, :1] * 0 + np.uint8([40, 60, 210]))
    for h in a:
        ref = red if h["x"] < 0.48 else blue if h["x"] > 0.52 else None
        if ref is not None:  # a patch away from the border between the halves has exactly that colour
            assert abs(h["a"] - ref[0, 0, 1]) < 0.1 and abs(h["b"] - ref[0, 0, 2]) < 0.1, h
    # Painted at the model size, each hint covers the (2r+1)^2 square its colour was averaged over.
    ab, mask = paint_hints(a, (192, 192), 2)
    assert 25 <= mask.sum() <= 250 and np.all(ab[:, mask[0] == 0] == 0)
    # 16-bit originals give the same hints as their 8-bit version, within rounding.
    b = sample_hints(rgb.astype(np.uint16) * 257, 10, "box1/p001", size=(192, 192), radius=2)
    assert [(h["x"], h["y"]) for h in a] == [(h["x"], h["y"]) for h in b]
    assert max(abs(h["a"] - g["a"]) for h, g in zip(a, b)) < 0.5
