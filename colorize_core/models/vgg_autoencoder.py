"""VGG-19 encoder + convolutional decoder predicting ab (the encoder of Simonyan & Zisserman, ICLR 2015).

At ``width=1`` the encoder is torchvision's ``vgg19().features`` layer for layer, so its parameters are
named ``features.N.weight`` / ``features.N.bias`` with torchvision's indices N and shapes, and the
published ImageNet VGG-19 weights load with :meth:`VGGAutoencoder.load_encoder_weights` from a URI the
user supplies (nothing is downloaded here). The only difference is the first conv, which takes one
channel (L): the RGB filters are summed, which is exact for a gray input fed identically to R, G and B.
The input is normalised with the mean of ImageNet's per-channel means and stds (0.449, 0.226) for the
same reason.

The decoder upsamples five times (bilinear x2, 3x3 conv, BatchNorm, ReLU), each time concatenating
the encoder's activation at that scale (the ReLU before each max-pool), then a 1x1 conv and
``tanh * 110`` give ab. ``width`` scales every channel count so tests can build a tiny one.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import AB_NORM, check_l
from .weights import WeightsError, load_state_dict

# torchvision's cfgs["E"]: VGG-19.
VGG19_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
IMAGENET_GRAY_MEAN = 0.449
IMAGENET_GRAY_STD = 0.226


def vgg19_feature_shapes(in_channels: int = 3, width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``vgg19().features`` state dict (``features.`` prefix)."""
    shapes, cin, i = {}, in_channels, 0
    for v in VGG19_CFG:
        if v == "M":
            i += 1
            continue
        c = max(1, int(v * width))
        shapes[f"features.{i}.weight"] = (c, cin, 3, 3)
        shapes[f"features.{i}.bias"] = (c,)
        cin, i = c, i + 2  # conv, ReLU
    return shapes


class VGGAutoencoder(nn.Module):
    """L in [0, 100] as [B,1,H,W] -> ab in Lab units as [B,2,H,W]; H, W multiples of 32."""

    input_size = (224, 224)
    accepts_hints = False

    def __init__(self, width: float = 1.0, decoder_width: float | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        skip_channels: list[int] = []
        self._taps: list[int] = []  # indices of the ReLUs whose outputs feed the decoder
        cin = 1
        for v in VGG19_CFG:
            if v == "M":
                self._taps.append(len(layers) - 1)
                skip_channels.append(cin)
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = max(1, int(v * width))
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        dw = width if decoder_width is None else decoder_width
        dec_channels = [max(2, int(c * dw / max(width, 1e-9))) for c in skip_channels]
        self.decoder = nn.ModuleList()
        prev = cin
        for skip, out in zip(reversed(skip_channels), reversed(dec_channels)):
            self.decoder.append(nn.ModuleDict({
                "up": nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(prev, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                                    nn.ReLU(inplace=True)),
                "fuse": nn.Sequential(nn.Conv2d(out + skip, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                                      nn.ReLU(inplace=True)),
            }))
            prev = out
        self.head = nn.Conv2d(prev, 2, 1)

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        check_l(l, multiple=32, name="vgg_autoencoder")
        x = (l / 100.0 - IMAGENET_GRAY_MEAN) / IMAGENET_GRAY_STD
        skips = []
        taps = set(self._taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                skips.append(x)
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = stage["up"](x)
            x = stage["fuse"](torch.cat([x, skip], dim=1))
        return torch.tanh(self.head(x)) * AB_NORM

    def load_encoder_weights(self, source: str | dict[str, torch.Tensor], *, storage_options=None) -> None:
        """Load torchvision VGG-19 weights (a URI/path, or a state dict) into the encoder.

        Takes the ``features.*`` keys (``classifier.*`` is ignored); a 3-channel first conv is reduced to
        one channel by summing over RGB. Shapes must match exactly (``width=1``)."""
        state = source if isinstance(source, dict) else load_state_dict(source, storage_options=storage_options)
        name = source if isinstance(source, str) else "VGG-19 state dict"
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        expected = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        if set(feats) != set(expected):
            missing = sorted(set(expected) - set(feats))
            raise WeightsError(f"{name}: not a VGG-19 `features` state dict "
                               f"(missing {missing[:3]}, unexpected {sorted(set(feats) - set(expected))[:3]})")
        first = "features.0.weight"
        if feats[first].dim() == 4 and feats[first].shape[1] == 3:
            feats[first] = feats[first].sum(dim=1, keepdim=True)
        for k, v in feats.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise WeightsError(f"{name}: shape mismatch for '{k}': file has {tuple(v.shape)}, encoder "
                                   f"expects {tuple(expected[k].shape)} (full-size VGG-19 needs width=1)")
        self.features.load_state_dict({k[len("features."):]: v for k, v in feats.items()})
