"""ECCV16: "Colorful Image Colorization" (Zhang, Isola, Efros, ECCV 2016).

A VGG-style classifier over 313 quantised ab bins. The module layout (``model1`` ... ``model8``,
``model_out``) mirrors the authors' PyTorch release so its state dict loads with ``strict=True`` and
no renaming; only the forward pass is ours (batch-first, optional annealed-mean temperature).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import nn

from .common import AB_NORM, L_CENT, L_NORM, check_l, release_conv_block

NUM_BINS = 313


def ab_bin_centres() -> np.ndarray:
    """The 313 in-gamut ab bin centres (grid step 10) of the paper, shape [313, 2]."""
    with resources.files("colorize_core.assets").joinpath("pts_in_hull.npy").open("rb") as f:
        return np.load(f).astype(np.float32)


class ECCV16Colorizer(nn.Module):
    """L in [0, 100] as [B,1,H,W] -> ab in Lab units as [B,2,H,W] (H, W multiples of 8).

    ``temperature`` is the paper's annealed mean: the bin distribution is sharpened as
    softmax(logits / T) before its expectation. T = 0.38 is the paper's choice; the default 1.0 is the
    plain mean that the released PyTorch model computes.
    """

    input_size = (256, 256)
    accepts_hints = False

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.model1 = release_conv_block([1, 64, 64], stride_last=2)
        self.model2 = release_conv_block([64, 128, 128], stride_last=2)
        self.model3 = release_conv_block([128, 256, 256, 256], stride_last=2)
        self.model4 = release_conv_block([256, 512, 512, 512])
        self.model5 = release_conv_block([512, 512, 512, 512], dilation=2)
        self.model6 = release_conv_block([512, 512, 512, 512], dilation=2)
        self.model7 = release_conv_block([512, 512, 512, 512])
        self.model8 = nn.Sequential(
            nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, NUM_BINS, 1, bias=True),
        )
        # The expectation over bins as a 1x1 conv whose weights are the bin centres / AB_NORM.
        self.model_out = nn.Conv2d(NUM_BINS, 2, 1, bias=False)
        with torch.no_grad():
            centres = torch.from_numpy(ab_bin_centres()).t() / AB_NORM  # [2, 313]
            self.model_out.weight.copy_(centres[:, :, None, None])

    def logits(self, l: torch.Tensor) -> torch.Tensor:
        """Per-pixel bin logits at 1/4 of the input resolution, [B,313,H/4,W/4]."""
        check_l(l, multiple=8, name="eccv16")
        x = (l - L_CENT) / L_NORM
        for block in (self.model1, self.model2, self.model3, self.model4,
                      self.model5, self.model6, self.model7, self.model8):
            x = block(x)
        return x

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        logits = self.logits(l)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        ab = self.model_out(torch.softmax(logits, dim=1))
        ab = nn.functional.interpolate(ab, scale_factor=4, mode="bilinear", align_corners=False)
        return ab * AB_NORM
