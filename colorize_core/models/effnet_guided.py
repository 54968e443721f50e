"""The guided EfficientNet-Lite0 U-Net: :mod:`.effnet_unet` plus SIGGRAPH17's colour hints.

Input convention of Zhang et al. 2017 ("Real-Time User-Guided Image Colorization with Learned Deep
Priors"): ``model(l, ab_hint, hint_mask)`` with L in [0, 100] [B,1,H,W], the hinted ab in Lab units
[B,2,H,W] and its mask in {0, 1} [B,1,H,W], all at the model's input size
(:func:`colorize_core.hints.paint_hints` makes them from a manifest's ``hints``); ``model(l)`` alone
means no hints. Every weight it shares with ``effnet_unet`` keeps that module's name, so the bundled
``effnet_unet`` weights initialise it, and the hint inputs enter only through layers whose last
convolution starts at zero: before any training its output equals ``effnet_unet``'s exactly, hints or not.

Where the hints enter, and why two places:

* **the encoder's stem**, as three extra input channels (ab / 110 and the mask) through a zero-initialised
  stride-2 convolution added to the pretrained stem's output before its BatchNorm. This is the paper's
  design (hints are input channels of the first layer): a hint travels up through the whole encoder
  with the image's semantics, so one point on a dress can recolour the whole dress (the stride-32
  features see most of the image);
* **each decoder merge** (strides 16 and 8, where ab is predicted), as the hint maps pooled to that
  stride (mean hinted ab of the cell and whether the cell has a hint) through a small branch whose last
  convolution is zero-initialised. A short path from the point to the output: the hinted colour is
  reproduced where it was placed without having to survive twenty ImageNet-trained blocks, which
  fine-tuning on a few hundred photos could not teach them quickly;
* and, at the same merges, the hints **spread** by normalised Gaussian convolutions at ``propagation_px``
  (default 16 and 48 px at the input size; :func:`propagated_hints`: the nearby hints' mean colour and how
  near they are) through another zero-initialised branch: a dense prior of "which colour the nearest hints
  say" that the decoder gates by what it sees, so a hint recolours its region, not only its cell. Measured
  while training: without it the gain of 10 sampled hints on the held-out split levelled off near +1.1 dB.

The hint layers have no bias and no normalisation, so all-zero hints add exactly nothing: the no-hint
output is the shared network's, and ``model(l)`` skips the hint layers altogether.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import AB_NORM, check_l
from .efficientnet import Conv2dSame
from .effnet_unet import EffNetUNetColorizer

_HINT_CHANNELS = 3  # ab / AB_NORM, mask
_BRANCH_WIDTH = 32
_STEM_WIDTH = 32


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    return conv


def _hint_branch(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, _BRANCH_WIDTH, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                         _zero(nn.Conv2d(_BRANCH_WIDTH, cout, 3, padding=1, bias=False)))


def pooled_hints(ab_hint: torch.Tensor, hint_mask: torch.Tensor, stride: int) -> torch.Tensor:
    """[B,3,H/s,W/s]: each cell's mean hinted ab / AB_NORM (0 where it has none) and whether it has a hint."""
    covered = F.avg_pool2d(hint_mask, stride)
    ab = F.avg_pool2d(ab_hint * hint_mask, stride) / covered.clamp_min(1e-6)
    return torch.cat([ab / AB_NORM, (covered > 0).to(ab.dtype)], dim=1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian (peak 1, zero padding) over the last two dimensions of [B,C,H,W]."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def propagated_hints(cells: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """[B,3*len(sigmas),h,w] from :func:`pooled_hints`' cells: per scale, the hints' ab spread by a normalised
    Gaussian convolution (each cell's Gaussian-weighted mean of the hinted cells' colours) and its confidence
    ``1 - exp(-weight)``, 0 far from any hint. A dense prior the decoder can gate by what it sees; zero
    hints give zeros."""
    ab, has = cells[:, :2], cells[:, 2:3]
    out = []
    for sigma in sigmas:
        weight = _gaussian_blur(has, sigma)
        spread = _gaussian_blur(ab * has, sigma) / weight.clamp_min(1e-6)
        out += [spread * (weight > 1e-6), 1.0 - torch.exp(-weight)]
    return torch.cat(out, dim=1)


class GuidedEffNetUNet(EffNetUNetColorizer):
    """L [B,1,H,W] (+ ab hints [B,2,H,W] in Lab units and mask [B,1,H,W] in {0,1}) -> ab [B,2,H,W];
    H, W multiples of 32. ``decoder_channels`` as :class:`EffNetUNetColorizer`."""

    input_size = (192, 192)
    accepts_hints = True

    def __init__(self, decoder_channels: tuple[int, ...] | list[int] = (96, 64),
                 propagation_px: tuple[float, ...] | list[float] = (16.0, 48.0)) -> None:
        super().__init__(decoder_channels)
        self.hint_stem = _zero(Conv2dSame(_HINT_CHANNELS, _STEM_WIDTH, 3, stride=2, bias=False))
        self.hint_decoder = nn.ModuleList(_hint_branch(_HINT_CHANNELS, c) for c in self.decoder_widths)
        self.propagation_px = tuple(float(p) for p in propagation_px)
        self.hint_propagation = nn.ModuleList(
            _hint_branch(3 * len(self.propagation_px), c) for c in self.decoder_widths) if self.propagation_px else None

    def forward(self, l: torch.Tensor, ab_hint: torch.Tensor | None = None,
                hint_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_l(l, multiple=32, name="effnet_guided")
        if ab_hint is None and hint_mask is None:
            return self._colorize(l)
        b, _, h, w = l.shape
        if ab_hint is None or hint_mask is None or ab_hint.shape != (b, 2, h, w) or hint_mask.shape != (b, 1, h, w):
            raise ValueError(
                f"effnet_guided: hints must be ab [B,2,H,W] and mask [B,1,H,W] matching L {tuple(l.shape)}, got "
                f"{None if ab_hint is None else tuple(ab_hint.shape)} and "
                f"{None if hint_mask is None else tuple(hint_mask.shape)}")
        ab_hint, hint_mask = ab_hint.float(), hint_mask.float()
        stem = self.hint_stem(torch.cat([ab_hint * hint_mask / AB_NORM, hint_mask], dim=1))
        merges = []
        for i, branch in enumerate(self.hint_decoder):
            stride = 2 ** (4 - i)
            cells = pooled_hints(ab_hint, hint_mask, stride)
            add = branch(cells)
            if self.hint_propagation is not None:
                sigmas = tuple(px / stride for px in self.propagation_px)
                add = add + self.hint_propagation[i](propagated_hints(cells, sigmas))
            merges.append(add)
        return self._colorize(l, stem, merges)
