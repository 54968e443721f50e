"""A plain U-Net colorizer (Ronneberger, Fischer, Brox. U-Net. MICCAI 2015), regressing ab from L.

Encoder of ``depth`` stages (two 3x3 conv-norm-ReLU, then 2x max-pool), a bottleneck, and a decoder
that upsamples (bilinear + 3x3 conv, which avoids the chequerboard of transposed convolutions) and
concatenates the matching encoder features. The head is a 1x1 conv followed by ``tanh * 110``: the
tanh bounds the output to the ab range of sRGB (|a|, |b| < ~110), so an untrained or over-driven net
cannot emit out-of-gamut values, and ``110`` is the same ab normalisation the paper models use.
``out_activation="linear"`` gives a plain regression head instead (same scale, unbounded).

Fully convolutional: any H, W that are multiples of ``2 ** depth`` work; ``input_size`` is only the
size it is trained and, by default, run at.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import AB_NORM, L_CENT, check_l

_NORMS = ("batch", "group", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {_NORMS}, got {kind!r}")


def double_conv(cin: int, cout: int, norm: str) -> nn.Sequential:
    bias = norm == "none"
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=bias), norm_layer(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=bias), norm_layer(norm, cout), nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, norm: str) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(cin, cskip, 3, padding=1))
        self.conv = double_conv(2 * cskip, cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetColorizer(nn.Module):
    """L in [0, 100] as [B,1,H,W] -> ab in Lab units as [B,2,H,W]; H, W multiples of ``2 ** depth``.

    ``base_channels`` is the width of the first stage, doubled at every stage and capped at
    ``max_channels``.
    """

    input_size = (256, 256)
    accepts_hints = False

    def __init__(self, base_channels: int = 32, depth: int = 4, max_channels: int = 512, norm: str = "batch",
                 out_activation: str = "tanh") -> None:
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be >= 1, got {depth}, {base_channels}")
        if out_activation not in ("tanh", "linear"):
            raise ValueError(f"out_activation must be 'tanh' or 'linear', got {out_activation!r}")
        norm_layer(norm, 8)  # validates the name
        self.depth = depth
        self.out_activation = out_activation
        widths = [min(base_channels * 2 ** i, max_channels) for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = 1
        for w in widths[:-1]:
            self.down.append(double_conv(cin, w, norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(widths[-2], widths[-1], norm)
        self.up = nn.ModuleList(
            _Up(widths[i + 1], widths[i], widths[i], norm)
            for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], 2, 1)

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        check_l(l, multiple=2 ** self.depth, name=type(self).__name__)
        x = (l - L_CENT) / L_CENT  # [-1, 1]
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        x = self.head(x)
        if self.out_activation == "tanh":
            x = torch.tanh(x)
        return x * AB_NORM


class CompactColorizer(UNetColorizer):
    """The small shipped U-Net (~1.4 M parameters, ~5.7 MB float32): fast enough on a CPU core for
    archive-scale runs, trained at 128 x 128 (see configs/train-compact.yaml)."""

    input_size = (128, 128)

    def __init__(self, base_channels: int = 16, depth: int = 4, max_channels: int = 128, norm: str = "batch",
                 out_activation: str = "tanh") -> None:
        super().__init__(base_channels=base_channels, depth=depth, max_channels=max_channels, norm=norm,
                         out_activation=out_activation)
