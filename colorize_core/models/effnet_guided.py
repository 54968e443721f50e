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
  fine-tuning on a few hundred photos could not teach them quickly.

The hint layers have no bias and no normalisation, so all-zero hints add exactly nothing: the no-hint
output is the shared network's, and ``model(l)`` skips the hint layers altogether.
"""

from __future__ import annotations

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


def _hint_branch(cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(_HINT_CHANNELS, _BRANCH_WIDTH, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                         _zero(nn.Conv2d(_BRANCH_WIDTH, cout, 3, padding=1, bias=False)))


def pooled_hints(ab_hint: torch.Tensor, hint_mask: torch.Tensor, stride: int) -> torch.Tensor:
    """[B,3,H/s,W/s]: each cell's mean hinted ab / AB_NORM (0 where it has none) and whether it has a hint."""
    covered = F.avg_pool2d(hint_mask, stride)
    ab = F.avg_pool2d(ab_hint * hint_mask, stride) / covered.clamp_min(1e-6)
    return torch.cat([ab / AB_NORM, (covered > 0).to(ab.dtype)], dim=1)


class GuidedEffNetUNet(EffNetUNetColorizer):
    """L [B,1,H,W] (+ ab hints [B,2,H,W] in Lab units and mask [B,1,H,W] in {0,1}) -> ab [B,2,H,W];
    H, W multiples of 32. ``decoder_channels`` as :class:`EffNetUNetColorizer`."""

    input_size = (192, 192)
    accepts_hints = True

    def __init__(self, decoder_channels: tuple[int, ...] | list[int] = (96, 64)) -> None:
        super().__init__(decoder_channels)
        self.hint_stem = _zero(Conv2dSame(_HINT_CHANNELS, _STEM_WIDTH, 3, stride=2, bias=False))
        self.hint_decoder = nn.ModuleList(_hint_branch(c) for c in self.decoder_widths)

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
        merges = [branch(pooled_hints(ab_hint, hint_mask, 2 ** (4 - i)))
                  for i, branch in enumerate(self.hint_decoder)]
        return self._colorize(l, stem, merges)
