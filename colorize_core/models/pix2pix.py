"""pix2pix for colorization (Isola, Zhu, Zhou, Efros. Image-to-Image Translation with Conditional
Adversarial Networks. CVPR 2017): a U-Net generator L -> ab and a 70x70 PatchGAN discriminator on (L, ab).

The generator is the paper's "U-Net-256": ``num_downs`` stride-2 4x4 conv stages (LeakyReLU 0.2,
BatchNorm except on the first and innermost), mirrored by transposed convs with skip connections, and
dropout 0.5 in the three innermost decoder stages as the paper's only source of noise. Output is
``tanh * 110`` (ab in Lab units). Only the generator is a registered colorizer; at inference it runs
in eval mode, so dropout is off and the output is deterministic (the paper keeps dropout on at test
time; for archive colorization a repeatable result matters more than sample diversity).

Losses: adversarial (BCE-with-logits as in the paper, or least squares) + ``lambda`` * L1 on ab / 110
with ``lambda = 100`` by default; see :func:`generator_loss` and :func:`discriminator_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import AB_NORM, L_CENT, check_l


class _Block(nn.Module):
    """One U-Net level: down -> inner -> up, output concatenated with the input (skip)."""

    def __init__(self, outer: int, inner: int, *, in_channels: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, dropout: float = 0.0, out_channels: int = 0):
        super().__init__()
        cin = in_channels if in_channels is not None else outer
        down = [nn.Conv2d(cin, inner, 4, stride=2, padding=1, bias=False)]
        if outermost:
            self.down = nn.Sequential(*down)
            self.sub = sub
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(inner * 2, out_channels, 4, stride=2, padding=1))
        elif innermost:
            self.down = nn.Sequential(nn.LeakyReLU(0.2, True), *down)
            self.sub = None
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(outer))
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2, True), *down, nn.BatchNorm2d(inner))
            self.sub = sub
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=False),
                  nn.BatchNorm2d(outer)]
            if dropout:
                up.append(nn.Dropout(dropout))
            self.up = nn.Sequential(*up)
        self.outermost = outermost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        if self.sub is not None:
            y = self.sub(y)
        y = self.up(y)
        return y if self.outermost else torch.cat([x, y], dim=1)


class Pix2PixGenerator(nn.Module):
    """L in [0, 100] as [B,1,H,W] -> ab in Lab units as [B,2,H,W]; H, W multiples of ``2 ** num_downs``."""

    input_size = (256, 256)
    accepts_hints = False

    def __init__(self, ngf: int = 64, num_downs: int = 8, dropout: float = 0.5) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the paper's 3 outer + innermost + 1 dropout level), "
                             f"got {num_downs}")
        self.num_downs = num_downs
        block = _Block(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = _Block(ngf * 8, ngf * 8, sub=block, dropout=dropout)
        block = _Block(ngf * 4, ngf * 8, sub=block)
        block = _Block(ngf * 2, ngf * 4, sub=block)
        block = _Block(ngf, ngf * 2, sub=block)
        self.net = _Block(ngf, ngf, in_channels=1, sub=block, outermost=True, out_channels=2)

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        check_l(l, multiple=2 ** self.num_downs, name="pix2pix")
        return torch.tanh(self.net((l - L_CENT) / L_CENT)) * AB_NORM


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN (``n_layers=3``): real/fake logits per overlapping patch of (L, ab), [B,1,h,w]."""

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, l: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([(l - L_CENT) / L_CENT, ab / AB_NORM], dim=1))


def gan_loss(logits: torch.Tensor, real: bool, mode: str = "bce") -> torch.Tensor:
    """``bce``: BCE-with-logits (paper); ``lsgan``: least squares on the raw outputs."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"gan mode must be 'bce' or 'lsgan', got {mode!r}")


def discriminator_loss(disc: nn.Module, l: torch.Tensor, ab_real: torch.Tensor, ab_fake: torch.Tensor,
                       mode: str = "bce") -> torch.Tensor:
    """Half the sum of real and fake terms (the paper halves D's objective to slow it against G)."""
    return 0.5 * (gan_loss(disc(l, ab_real), True, mode) + gan_loss(disc(l, ab_fake), False, mode))


def generator_loss(disc: nn.Module, l: torch.Tensor, ab_real: torch.Tensor, ab_fake: torch.Tensor,
                   mode: str = "bce") -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarial term, L1 on ab / 110); the total is ``adv + lambda * l1``."""
    return gan_loss(disc(l, ab_fake), True, mode), F.l1_loss(ab_fake / AB_NORM, ab_real / AB_NORM)


def pix2pix_loss(disc: nn.Module, l: torch.Tensor, ab_real: torch.Tensor, ab_fake: torch.Tensor,
                 mode: str = "bce", l1_lambda: float = 100.0) -> torch.Tensor:
    """The generator's objective of the paper: adversarial + lambda * L1."""
    adv, l1 = generator_loss(disc, l, ab_real, ab_fake, mode)
    return adv + l1_lambda * l1
