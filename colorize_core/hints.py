"""SIGGRAPH17 colour hints: painting them at model size, simulating them for training, sampling them
for evaluation.

A hint is ``{x, y, a, b}``: a point in normalised image coordinates (x, y in [0, 1]) and a colour in
Lab units. A model that takes hints gets them as two maps at its input size (Zhang et al. 2017's input
convention): ``ab_hint`` [2,H,W] in Lab units and ``hint_mask`` [1,H,W] in {0, 1}, the hinted colour
painted over a small square around each point. Three producers, one convention:

* :func:`paint_hints`: a manifest's ``hints`` column (what a person placed), a (2r+1)^2 square each;
* :func:`simulate_hints`: training, as the paper did (``util.add_color_patches_rand_gt`` of the
  authors' release): a geometrically distributed number of points per image, positions from a 2-D
  Gaussian around the centre (sigma a quarter of the side: people click on the subject more than on
  the border), each patch of a random side from 1 to 9 px revealing the ground truth's mean ab over that
  patch; and no hints at all for a fraction of the batches, so the model stays a good automatic
  colorizer;
* :func:`sample_hints`: evaluation ("N hints sampled from the originals"): the same positions, drawn
  from a generator seeded by (seed, image_id), so every model, run and machine scores against the same
  points; each colour is the original's mean ab over exactly the area that :func:`paint_hints` will
  cover at the model's size.

Pure numpy/torch: no I/O, no Ray.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import color


def paint_hints(hints: Any, size: tuple[int, int], radius: int) -> tuple[np.ndarray, np.ndarray]:
    """SIGGRAPH17 hint map and mask at model size from [{x, y, a, b}] with x, y in [0, 1]."""
    h, w = size
    ab = np.zeros((2, h, w), np.float32)
    mask = np.zeros((1, h, w), np.float32)
    if hints is None or isinstance(hints, float):  # null cell (NaN once through Ray)
        hints = ()
    for hint in hints:
        x, y = float(hint["x"]), float(hint["y"])
        if not (0 <= x <= 1 and 0 <= y <= 1) or any(math.isnan(v) for v in (x, y, hint["a"], hint["b"])):
            raise ValueError(f"hint outside the image: {dict(hint)}")
        cx, cy = min(int(x * w), w - 1), min(int(y * h), h - 1)
        ys, xs = slice(max(cy - radius, 0), cy + radius + 1), slice(max(cx - radius, 0), cx + radius + 1)
        ab[0, ys, xs], ab[1, ys, xs] = float(hint["a"]), float(hint["b"])
        mask[0, ys, xs] = 1.0
    return ab, mask


@dataclass(frozen=True)
class HintSimulation:
    """How training reveals ground-truth colour. The defaults are the paper's (p = 1/8, patches of 1-9 px,
    Gaussian positions with sigma = side / 4), plus ``hint_free_batches``: the fraction of batches with no
    hint at all (besides the images whose geometric draw is 0, 1/8 of the others)."""

    p: float = 1 / 8
    patch: tuple[int, int] = (1, 9)
    sigma: float = 0.25
    hint_free_batches: float = 0.25
    max_points: int = 64  # a cap on the geometric tail (P(K > 64) < 2e-4 at p = 1/8)

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise ValueError(f"hint p must be in (0, 1], got {self.p}")
        if not 1 <= self.patch[0] <= self.patch[1]:
            raise ValueError(f"hint patch must be (min, max) sides with 1 <= min <= max, got {self.patch}")
        if not 0 <= self.hint_free_batches <= 1:
            raise ValueError(f"hint_free_batches must be in [0, 1], got {self.hint_free_batches}")


def _gaussian_corner(rng: np.random.Generator, side: int, patch: int, sigma: float) -> int:
    """Top-left corner of a ``patch``-sided square along one axis: the authors' ``normal`` sampler."""
    span = side - patch + 1
    return int(np.clip(rng.normal(span / 2.0, span * sigma), 0, side - patch))


def simulate_hints(ab: torch.Tensor, rng: np.random.Generator,
                   sim: HintSimulation = HintSimulation()) -> tuple[torch.Tensor, torch.Tensor]:
    """Training hints from the ground truth: ab [B,2,H,W] (Lab units) -> (ab_hint [B,2,H,W], mask [B,1,H,W])."""
    b, _, h, w = ab.shape
    hint = torch.zeros_like(ab)
    mask = ab.new_zeros((b, 1, h, w))
    if rng.random() < sim.hint_free_batches:
        return hint, mask
    for i in range(b):
        k = min(int(rng.geometric(sim.p)) - 1, sim.max_points)  # 0, 1, 2, ...: P(0) = p
        for _ in range(k):
            p = int(rng.integers(sim.patch[0], sim.patch[1] + 1))
            y, x = _gaussian_corner(rng, h, p, sim.sigma), _gaussian_corner(rng, w, p, sim.sigma)
            patch = ab[i, :, y:y + p, x:x + p]
            hint[i, :, y:y + p, x:x + p] = patch.mean(dim=(1, 2), keepdim=True)
            mask[i, :, y:y + p, x:x + p] = 1.0
    return hint, mask


def image_rng(image_id: str, seed: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, image_id): the same hints for an image everywhere."""
    digest = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), digest])


def sample_hints(rgb: np.ndarray, n: int, image_id: str, *, size: tuple[int, int], radius: int,
                 seed: int = 0, sigma: float = HintSimulation.sigma) -> list[dict[str, float]]:
    """``n`` hints from an original colour image ``rgb`` [H,W,3] (any resolution, uint8 or uint16), for a
    model of input ``size`` whose hints are painted with ``radius``: centres drawn on the model's grid as
    in training (Gaussian around the centre), each colour the original's mean ab over the image area that
    the painted (2r+1)^2 square stands for. Deterministic in (seed, image_id)."""
    rng = image_rng(image_id, seed)
    mh, mw = size
    ih, iw = rgb.shape[:2]
    side = 2 * radius + 1
    out = []
    for _ in range(n):
        cy = _gaussian_corner(rng, mh, min(side, mh), sigma) + min(radius, (mh - 1) // 2)
        cx = _gaussian_corner(rng, mw, min(side, mw), sigma) + min(radius, (mw - 1) // 2)
        y0, y1 = _span(cy, radius, mh, ih)
        x0, x1 = _span(cx, radius, mw, iw)
        patch = rgb[y0:y1, x0:x1]
        lab = color.srgb_to_lab(np.ascontiguousarray(patch if patch.ndim == 3 else np.repeat(patch[..., None], 3, 2)))
        out.append({"x": (cx + 0.5) / mw, "y": (cy + 0.5) / mh,
                    "a": float(lab[..., 1].mean()), "b": float(lab[..., 2].mean())})
    return out


def _span(centre: int, radius: int, model_side: int, image_side: int) -> tuple[int, int]:
    """Image pixels [start, stop) under model pixels [centre - r, centre + r] (at least one pixel)."""
    lo, hi = max(centre - radius, 0), min(centre + radius + 1, model_side)
    start = int(math.floor(lo * image_side / model_side))
    stop = max(start + 1, int(math.ceil(hi * image_side / model_side)))
    return start, min(stop, image_side)
