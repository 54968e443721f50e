"""The guided EfficientNet-Lite0 U-Net: :mod:`.effnet_unet` plus SIGGRAPH17's colour hints.

Input convention of Zhang et al. 2017 ("Real-Time User-Guided Image Colorization with Learned Deep
Priors"): ``model(l, ab_hint, hint_mask)`` with L in [0, 100] [B,1,H,W], the hinted ab in Lab units
[B,2,H,W] and its mask in {0, 1} [B,1,H,W], all at the model's input size
(:func:`colorize_core.hints.paint_hints` makes them from a manifest's ``hints``); ``model(l)`` alone
means no hints.

The network is ``effnet_unet`` (every weight keeps that module's name, so the bundled ``effnet_unet``
weights load into it) followed by :class:`HintPropagation`: each hint's *correction* (the hinted colour
minus what the network predicted there) spreads over the image with a weight that falls with distance
and with the difference in lightness from the hinted point (an edge-aware, bilateral spread in the spirit
of Levin et al.'s "Colorization using Optimization", 2004: neighbours of similar intensity get similar
colour), normalised by the sum of the weights plus a confidence term, so far from every hint (or across a
strong edge) the network's own prediction stands. Its three parameters (spatial scale, lightness scale,
confidence) are trained with hints simulated from the ground truth as the paper did
(:func:`colorize_core.hints.simulate_hints`), the network frozen (``configs/train-effnet_guided.yaml``).

Why not hint channels at the network's input, as the paper: fine-tuned on the project's few hundred
photos, such layers reached +1.5 dB with 10 sampled hints on the held-out split (phase-2 figures in
``docs/model_card.md``); the explicit spread gives more (+3 dB), costs one small matrix product per image,
cannot forget the automatic model (no hints: the output *is* effnet_unet's), and its behaviour is easy to
state to a curator: a point recolours the similar-looking region around it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_l
from .effnet_unet import EffNetUNetColorizer

_PATCH_PIXELS = 25.0  # a hint painted with hint_radius 2 covers 5 x 5 model pixels: it weighs 1
_MAX_KEYS = 4096  # hinted cells per image before the hint maps are pooled coarser (bounds memory)


def _cells(x: torch.Tensor, stride: int) -> torch.Tensor:
    return F.avg_pool2d(x, stride) if stride > 1 else x


def _centres(h: int, w: int, stride: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (y, x) of the centres of a stride-``stride`` grid over an h x w image, flattened."""
    ys = (torch.arange(h // stride, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w // stride, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return yy.reshape(-1), xx.reshape(-1)


class HintPropagation(nn.Module):
    """ab [B,2,H,W] + the hints -> ab with each hint's correction spread edge-aware (see the module doc).

    For query cell q and hinted cell k (the hint maps pooled at ``key_stride``):
    ``w_qk = n_k / 25 * exp(-|p_q - p_k|^2 / 2 s^2 - (L_q - L_k)^2 / 2 t^2)`` and
    ``ab_q += sum_k w_qk (hint_k - ab_k) / (sum_k w_qk + c)``, with ``s`` a fraction of the longer side,
    ``t`` in L units, ``c`` the confidence of the network's own prediction and ``n_k`` the cell's hinted
    pixels. Computed at ``query_stride`` and upsampled bilinearly (the network predicts ab at stride 8)."""

    def __init__(self, sigma_side: float = 0.2, sigma_l: float = 8.0, confidence: float = 0.3,
                 key_stride: int = 2, query_stride: int = 2) -> None:
        super().__init__()
        self.log_sigma_side = nn.Parameter(torch.tensor(math.log(sigma_side)))
        self.log_sigma_l = nn.Parameter(torch.tensor(math.log(sigma_l)))
        self.log_confidence = nn.Parameter(torch.tensor(math.log(confidence)))
        self.key_stride, self.query_stride = int(key_stride), int(query_stride)

    def scales(self) -> dict[str, float]:
        """The trained parameters in their own units (for the model card and logs)."""
        return {"sigma_side": float(self.log_sigma_side.detach().exp()), "sigma_l": float(self.log_sigma_l.detach().exp()),
                "confidence": float(self.log_confidence.detach().exp())}

    def forward(self, l: torch.Tensor, ab: torch.Tensor, ab_hint: torch.Tensor, hint_mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(l.device.type, enabled=False):
            l, ab, ab_hint, hint_mask = l.float(), ab.float(), ab_hint.float(), hint_mask.float()
            b, _, h, w = l.shape
            qs = self.query_stride
            two_s2 = 2.0 * (self.log_sigma_side.exp() * max(h, w)) ** 2
            two_t2 = 2.0 * self.log_sigma_l.exp() ** 2
            conf = self.log_confidence.exp()
            qy, qx = _centres(h, w, qs, l.device)
            lq = _cells(l, qs).reshape(b, -1)
            corrections = []
            for i in range(b):
                mask = hint_mask[i:i + 1]
                if not bool(mask.any()):
                    corrections.append(ab.new_zeros((2, qy.numel())))
                    continue
                ks = self.key_stride
                while int((_cells(mask, ks) > 0).sum()) > _MAX_KEYS:
                    ks *= 2
                cover = _cells(mask, ks).reshape(-1)
                keep = cover > 0
                cover = cover[keep]
                ky, kx = (c[keep] for c in _centres(h, w, ks, l.device))
                mean = lambda x: _cells(x * mask, ks).reshape(x.shape[1], -1)[:, keep] / cover  # noqa: E731
                lk, hint_k, base_k = mean(l[i:i + 1]), mean(ab_hint[i:i + 1]), mean(ab[i:i + 1])
                d2 = (qy[:, None] - ky[None]) ** 2 + (qx[:, None] - kx[None]) ** 2  # [Q, K]
                dl2 = (lq[i][:, None] - lk[0][None]) ** 2
                weight = (cover * ks * ks / _PATCH_PIXELS)[None] * torch.exp(-d2 / two_s2 - dl2 / two_t2)
                corrections.append(((hint_k - base_k) @ weight.T) / (weight.sum(dim=1) + conf)[None])
            corr = torch.stack(corrections).reshape(b, 2, h // qs, w // qs)
            if qs > 1:
                corr = F.interpolate(corr, size=(h, w), mode="bilinear", align_corners=False)
            return ab + corr


class GuidedEffNetUNet(EffNetUNetColorizer):
    """L [B,1,H,W] (+ ab hints [B,2,H,W] in Lab units and mask [B,1,H,W] in {0,1}) -> ab [B,2,H,W];
    H, W multiples of 32. ``decoder_channels`` as :class:`EffNetUNetColorizer`; the rest
    :class:`HintPropagation`'s initial values."""

    input_size = (192, 192)
    accepts_hints = True

    def __init__(self, decoder_channels: tuple[int, ...] | list[int] = (96, 64), sigma_side: float = 0.2,
                 sigma_l: float = 8.0, confidence: float = 0.3) -> None:
        super().__init__(decoder_channels)
        self.hint_propagation = HintPropagation(sigma_side, sigma_l, confidence)
        self.backbone_frozen = False

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
        return self.hint_propagation(l, self._colorize(l), ab_hint, hint_mask)

    def freeze_backbone(self, frozen: bool = True) -> "GuidedEffNetUNet":
        """Train only the hint layers: the effnet_unet part gets no gradient and keeps its BatchNorm
        statistics."""
        self.backbone_frozen = frozen
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("hint_") or not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "GuidedEffNetUNet":
        super().train(mode)
        if self.backbone_frozen:
            for name, module in self.named_children():
                if not name.startswith("hint_"):
                    module.eval()
        return self
