"""What every model in this package shares: the Lab normalisation constants of Zhang et al.'s released
models (which the other architectures adopted), the check of the L input every forward starts with, and
the convolution block of the released ECCV16 / SIGGRAPH17 layouts.

Every model takes CIE L in [0, 100] as [B,1,H,W] and returns ab in Lab units; ``AB_NORM`` (110) bounds
the sRGB gamut's ab, so ``tanh * AB_NORM`` heads and ``/ AB_NORM`` losses have unit scale.
"""

from __future__ import annotations

import torch
from torch import nn

L_CENT = 50.0
L_NORM = 100.0
AB_NORM = 110.0


def check_l(l: torch.Tensor, *, multiple: int, name: str) -> None:
    """L must be [B,1,H,W] with H, W multiples of the model's downsampling factor; the message says what to do."""
    if l.dim() != 4 or l.shape[1] != 1:
        raise ValueError(f"{name}: expected L as [B,1,H,W], got shape {tuple(l.shape)}")
    h, w = l.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{name}: H and W must be multiples of {multiple}, got {h}x{w}; "
            f"resize the L input to e.g. {max(multiple, round(h / multiple) * multiple)}x"
            f"{max(multiple, round(w / multiple) * multiple)}"
        )


def release_conv_block(channels: list[int], *, stride_last: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv-ReLU pairs closed by BatchNorm: the index layout (0, 2, ..., 2n) the ECCV16 / SIGGRAPH17 releases
    use, so their state dicts load with no renaming."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        stride = stride_last if i == len(channels) - 2 else 1
        layers += [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=True),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.BatchNorm2d(channels[-1]))
    return nn.Sequential(*layers)
