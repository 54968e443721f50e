"""SIGGRAPH17: "Real-Time User-Guided Image Colorization with Learned Deep Priors" (Zhang et al. 2017).

A U-Net-like network taking L, sparse ab colour hints and their mask. The module names
(``model1`` ... ``model10``, ``model8up``, ``model3short8``, ``model2short9``, ``model1short10``,
``model_class``, ``model_out``) mirror the authors' release so its state dict loads unchanged. Unlike
the release's forward, the decoder tail runs once, and the unused 529-way classification head
(``model_class``) is kept only so the official file loads strictly; it is never evaluated.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import AB_NORM, L_CENT, L_NORM, check_l, release_conv_block


def _relu_conv(channels: list[int], *, batchnorm: bool) -> nn.Sequential:
    """ReLU-first blocks of the decoder (index layout 1, 3, ... as in the release)."""
    layers: list[nn.Module] = []
    for cin, cout in zip(channels[:-1], channels[1:]):
        layers += [nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 3, padding=1, bias=True)]
    if batchnorm:
        layers += [nn.ReLU(inplace=True), nn.BatchNorm2d(channels[-1])]
    return nn.Sequential(*layers)


class SIGGRAPH17Colorizer(nn.Module):
    """L in [0,100] [B,1,H,W] (+ optional ab hints [B,2,H,W] in Lab units and mask [B,1,H,W] in {0,1})
    -> ab in Lab units [B,2,H,W]. H and W must be multiples of 8 (three 2x subsamplings)."""

    input_size = (256, 256)
    accepts_hints = True

    def __init__(self, classes: int = 529) -> None:
        super().__init__()
        self.model1 = release_conv_block([4, 64, 64])
        self.model2 = release_conv_block([64, 128, 128])
        self.model3 = release_conv_block([128, 256, 256, 256])
        self.model4 = release_conv_block([256, 512, 512, 512])
        self.model5 = release_conv_block([512, 512, 512, 512], dilation=2)
        self.model6 = release_conv_block([512, 512, 512, 512], dilation=2)
        self.model7 = release_conv_block([512, 512, 512, 512])
        self.model8up = nn.Sequential(nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1, bias=True))
        self.model3short8 = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=True))
        self.model8 = _relu_conv([256, 256, 256], batchnorm=True)
        self.model9up = nn.Sequential(nn.ConvTranspose2d(256, 128, 4, stride=2, padding=1, bias=True))
        self.model2short9 = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, bias=True))
        self.model9 = _relu_conv([128, 128], batchnorm=True)
        self.model10up = nn.Sequential(nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1, bias=True))
        self.model1short10 = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1, bias=True))
        self.model10 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1, bias=True),
            nn.LeakyReLU(negative_slope=0.2),
        )
        # Present in the release (classification head used in training); never evaluated here.
        self.model_class = nn.Sequential(nn.Conv2d(256, classes, 1, bias=True))
        self.model_out = nn.Sequential(nn.Conv2d(128, 2, 1, bias=True), nn.Tanh())

    def forward(
        self,
        l: torch.Tensor,
        ab_hint: torch.Tensor | None = None,
        hint_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_l(l, multiple=8, name="siggraph17")
        b, _, h, w = l.shape
        if ab_hint is None:
            ab_hint = l.new_zeros((b, 2, h, w))
        if hint_mask is None:
            hint_mask = l.new_zeros((b, 1, h, w))
        if ab_hint.shape != (b, 2, h, w) or hint_mask.shape != (b, 1, h, w):
            raise ValueError(
                f"siggraph17: hints must be ab [B,2,H,W] and mask [B,1,H,W] matching L {tuple(l.shape)}, "
                f"got {tuple(ab_hint.shape)} and {tuple(hint_mask.shape)}"
            )
        x = torch.cat(((l - L_CENT) / L_NORM, ab_hint / AB_NORM, hint_mask), dim=1)
        conv1 = self.model1(x)
        conv2 = self.model2(conv1[:, :, ::2, ::2])
        conv3 = self.model3(conv2[:, :, ::2, ::2])
        conv7 = self.model7(self.model6(self.model5(self.model4(conv3[:, :, ::2, ::2]))))
        conv8 = self.model8(self.model8up(conv7) + self.model3short8(conv3))
        conv9 = self.model9(self.model9up(conv8) + self.model2short9(conv2))
        conv10 = self.model10(self.model10up(conv9) + self.model1short10(conv1))
        return self.model_out(conv10) * AB_NORM
