"""Training building blocks: data, losses, one train step per architecture family, validation.

Pure library code (no Ray): :mod:`colorize_core.train` runs these inside Ray Train workers, tests run them
directly. Training data is a Parquet manifest of colour images (``image_id, uri``). The sets this
project trains on are small (tens to thousands of images), so each worker decodes its shard once,
keeps it as Lab, and samples random crops from memory; a crop takes a random square of
``scale`` x the short side, resizes it to ``crop_size`` and flips it horizontally half of the time.
Training at a random scale matters: at inference the whole image is resized to the model's input
size, so the model must see whole-image statistics as well as close-ups.

Losses are computed on ab / 110 (the range of sRGB ab), so L1, MSE and the pix2pix lambda have
their usual magnitudes.

Why ``l1_rebalanced`` (the bundled ``effnet_unet``): plain regression settles on the colour that is
least wrong on average, and since most pixels of most photos are nearly gray that is a desaturated,
often sepia, image (the old ``compact``). Classification over the 313 ab bins with rebalancing (Zhang et
al.) fixes saturation but needs a 313-channel head and costs PSNR. Weighting each pixel's L1 by the
rarity of its true colour keeps the one-output regression head (and its PSNR) while pushing against
the drift to gray; ``rebalance_power`` sets how hard (1 = the paper's weights, 0 = plain L1). Measured
on the held-out split during the bundled model's training: power 0.5 on a frozen encoder left PSNR at
gray's with a warm cast (mean b +3 over the originals'); plain L1 fine-tuning gained 1.1 dB and kept
colourfulness at 25-27; a further phase at power 0.25 raised it to 32 for 0.4 dB less PSNR (not shipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import color, render
from .models.common import AB_NORM
from .models.preprocess import Preprocessing

LossName = Literal["l1", "mse", "l1_rebalanced", "gan"]


# --------------------------------------------------------------------------- data


def read_manifest(uri: str, storage_options=None) -> list[dict[str, str]]:
    """Rows ``{image_id, uri}`` of a Parquet manifest (a file or a prefix of files), in file order."""
    from . import storage

    table = storage.read_parquet_table(uri, storage_options, columns=["image_id", "uri"])
    return table.to_pylist()


def load_rgb_u8(uri: str, storage_options=None) -> np.ndarray:
    """Decode one image to uint8 RGB [H,W,3] (16-bit sources are rounded to 8 bits)."""
    from . import imageio, storage

    return imageio.to_uint8(imageio.decode_image(storage.read_bytes(uri, storage_options)).rgb)


def rgb_to_lab_chw(rgb_u8: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] -> float32 Lab [3,H,W]."""
    return np.ascontiguousarray(color.srgb_to_lab(rgb_u8).transpose(2, 0, 1))


@dataclass
class LabImageSet:
    """Decoded training images held as Lab tensors [3,H,W], with a sampler of augmented crops."""

    images: list[torch.Tensor]
    image_ids: list[str]

    @classmethod
    def from_manifest(cls, uri: str, *, rank: int = 0, world_size: int = 1, storage_options=None,
                      min_side: int = 0) -> "LabImageSet":
        """This worker's shard (rows ``rank::world_size``; every row if there are fewer rows than
        workers). Images whose short side is below ``min_side`` are upscaled to it."""
        rows = read_manifest(uri, storage_options)
        if not rows:
            raise ValueError(f"{uri}: the training manifest has no rows")
        if len(rows) >= world_size:
            rows = rows[rank::world_size]
        images = []
        for row in rows:
            lab = torch.from_numpy(rgb_to_lab_chw(load_rgb_u8(row["uri"], storage_options)))
            short = min(lab.shape[-2:])
            if short < min_side:
                lab = resize(lab[None], scale=min_side / short)[0]
            images.append(lab)
        return cls(images, [r["image_id"] for r in rows])

    def sample(self, batch_size: int, crop_size: int, rng: np.random.Generator,
               scale: tuple[float, float] = (0.3, 1.0), flip: bool = True,
               ratio: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (L [B,1,s,s], ab [B,2,s,s]) float32 random crops, ``s = crop_size``."""
        crops = []
        for _ in range(batch_size):
            lab = self.images[int(rng.integers(len(self.images)))]
            crops.append(random_crop(lab, crop_size, rng, scale=scale, flip=flip, ratio=ratio))
        batch = torch.stack(crops)
        return batch[:, :1].contiguous(), batch[:, 1:].contiguous()


def resize(x: torch.Tensor, size: tuple[int, int] | None = None, scale: float | None = None) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of [B,C,H,W]."""
    if size is None:
        h, w = x.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if tuple(size) == tuple(x.shape[-2:]):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def random_crop(lab: torch.Tensor, crop_size: int, rng: np.random.Generator, *,
                scale: tuple[float, float] = (0.3, 1.0), flip: bool = True,
                ratio: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """A random rectangle resized to ``crop_size`` x ``crop_size`` and mirrored left-right with
    probability 1/2. [3,H,W] -> [3,s,s]. Its mean side is ``U(scale) * short side`` (at least
    ``crop_size``), its width / height log-uniform in ``ratio`` (as far as the image allows).

    Why ``ratio``: inference resizes the whole image to the model's square input, so a 3:2 photo
    reaches the model squeezed 1.5x across; crops of other shapes than square show training that too
    (torchvision's ``RandomResizedCrop`` idea)."""
    h, w = lab.shape[-2:]
    short = min(h, w)
    lo = max(min(crop_size, short), int(scale[0] * short))
    hi = max(lo, int(scale[1] * short))
    side = int(rng.integers(lo, hi + 1))
    if ratio[0] == ratio[1] == 1.0:
        ch = cw = side
    else:
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        ch, cw = min(h, max(1, round(side / math.sqrt(r)))), min(w, max(1, round(side * math.sqrt(r))))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    crop = resize(lab[None, :, y:y + ch, x:x + cw], size=(crop_size, crop_size))[0]
    if flip and rng.random() < 0.5:
        crop = crop.flip(-1)
    return crop


# --------------------------------------------------------------------------- losses and steps


def regression_loss(pred_ab: torch.Tensor, ab: torch.Tensor, kind: str,
                    bin_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L1 or MSE on ab / 110; ``l1_rebalanced`` weighs each pixel's L1 by :func:`rebalance_weights` of
    its true colour's ab bin (``bin_weights``, None = all ones)."""
    if kind == "l1":
        return F.l1_loss(pred_ab / AB_NORM, ab / AB_NORM)
    if kind == "mse":
        return F.mse_loss(pred_ab / AB_NORM, ab / AB_NORM)
    if kind == "l1_rebalanced":
        err = (pred_ab / AB_NORM - ab / AB_NORM).abs().sum(dim=1)  # [B,H,W]
        if bin_weights is None:
            return err.mean() / 2
        w = bin_weights.to(ab.device)[ab_bin_index(ab)]
        return (w * err).mean() / 2
    raise ValueError(f"regression loss must be 'l1', 'mse' or 'l1_rebalanced', got {kind!r}")


# Class rebalancing (Zhang, Isola, Efros. Colorful Image Colorization. ECCV 2016, section 2.2) on the
# paper's ab grid: bins of 10 units, centres at multiples of 10 (the 313 in-gamut ones are
# assets/pts_in_hull.npy; the 23 x 23 square grid around them keeps the lookup a cheap integer
# operation, and out-of-gamut cells simply never occur).
AB_GRID_STEP = 10.0
AB_GRID_HALF = 11  # centres -110 .. 110
AB_GRID_SIZE = 2 * AB_GRID_HALF + 1


def ab_bin_index(ab: torch.Tensor) -> torch.Tensor:
    """[B,2,H,W] ab -> [B,H,W] int64 index of the nearest grid bin (0 .. 23*23 - 1)."""
    q = torch.round(ab / AB_GRID_STEP).long().clamp(-AB_GRID_HALF, AB_GRID_HALF) + AB_GRID_HALF
    return q[:, 0] * AB_GRID_SIZE + q[:, 1]


def ab_histogram(images: Iterable[torch.Tensor], stride: int = 4) -> torch.Tensor:
    """Counts of every grid bin over Lab images [3,H,W] (every ``stride``-th pixel), float64."""
    counts = torch.zeros(AB_GRID_SIZE * AB_GRID_SIZE, dtype=torch.float64)
    for lab in images:
        ab = lab[1:, ::stride, ::stride][None]
        counts += torch.bincount(ab_bin_index(ab).flatten(), minlength=counts.numel()).double()
    return counts


def rebalance_weights(counts: torch.Tensor, mix: float = 0.5, power: float = 1.0) -> torch.Tensor:
    """Per-bin loss weights ``((1 - mix) * p + mix / Q) ** -power``, scaled so their mean under the data
    distribution ``p`` is 1 (the paper: mix 0.5, power 1, Q = occupied bins, ``p`` smoothed); float32.

    ``power`` < 1 softens the paper's rebalancing: enough to stop the sepia-gray average that a
    regression loss settles on when most pixels are unsaturated, without trading away PSNR."""
    p = counts / counts.sum().clamp_min(1)
    grid = p.reshape(1, 1, AB_GRID_SIZE, AB_GRID_SIZE).float()
    kernel = torch.tensor([0.25, 0.5, 0.25])
    grid = F.conv2d(grid, (kernel[:, None] * kernel[None, :])[None, None], padding=1)  # ~sigma 5 ab units
    p_s = grid.flatten().double()
    p_s = p_s / p_s.sum()
    q = int((counts > 0).sum().clamp_min(1))
    w = ((1 - mix) * p_s + mix / q) ** -power
    w = w / (w * p).sum()
    return w.float()


class WeightEMA:
    """Exponential moving average of a model's weights and float buffers (BatchNorm statistics), updated
    after every optimizer step: ``avg = d * avg + (1 - d) * current`` with ``d = min(decay, (1 + step) /
    (10 + step))``, so the first steps' (often poor) weights do not linger in the average (the warm-up
    of TensorFlow's ExponentialMovingAverage ``num_updates``). On a small training set the average
    generalises better than the last step's weights (Polyak averaging)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in ``model``'s weights after optimizer step ``step`` (0-based, of the whole run)."""
        d = self.decay_at(step)
        current = unwrap(model).state_dict()
        for key, avg in self.module.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(current[key].to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(current[key])


@dataclass
class TrainState:
    """Everything a step mutates and a checkpoint must restore."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: str
    discriminator: nn.Module | None = None
    d_optimizer: torch.optim.Optimizer | None = None
    gan_mode: str = "bce"
    l1_lambda: float = 100.0
    bin_weights: torch.Tensor | None = None
    step: int = 0
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    ema: WeightEMA | None = None

    @property
    def published(self) -> nn.Module:
        """The weights validation scores and checkpoints hold: the moving average if kept, else the model."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer (and discriminator) state for ``train_state.pt``; the published weights go to the
        checkpoint's ``weights.pt`` (with an EMA, the raw weights come here to resume from)."""
        out: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "step": self.step, "epoch": self.epoch}
        if self.ema is not None:
            out["raw_model"] = unwrap(self.model).state_dict()
        if self.discriminator is not None:
            out["discriminator"] = unwrap(self.discriminator).state_dict()
            out["d_optimizer"] = self.d_optimizer.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any], published: nn.Module | None = None) -> None:
        """Restore from ``train_state.pt`` and the checkpoint's module (``published``): with an EMA the
        checkpoint holds the average and ``raw_model`` the weights training continues from."""
        if self.ema is not None and published is not None:
            self.ema.module.load_state_dict(published.state_dict())
        if "raw_model" in state:
            unwrap(self.model).load_state_dict(state["raw_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        if self.discriminator is not None and "discriminator" in state:
            unwrap(self.discriminator).load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return getattr(module, "module", module)


def param_groups(model: nn.Module, lr_scales: dict[str, float]) -> list[dict[str, Any]]:
    """Optimizer groups: every parameter whose name starts with a prefix of ``lr_scales`` in that prefix's
    group (``lr_scale`` = its multiplier; the first matching prefix wins), the rest in group 0 (scale 1).
    A pure function of the names, so a resumed run's optimizer state loads into the same groups.

    Why: layers added to a pretrained network at zero (the guided model's hint layers) start from nothing
    while the rest only needs nudging; at one learning rate the new layers learn too slowly, or the
    pretrained ones forget."""
    groups: dict[str, list[nn.Parameter]] = {"": [], **{p: [] for p in lr_scales}}
    for name, param in unwrap(model).named_parameters():
        groups[next((p for p in lr_scales if name.startswith(p)), "")].append(param)
    empty = [p for p, params in groups.items() if p and not params]
    if empty:
        raise ValueError(f"lr_scales prefix(es) {empty} match no parameter of {type(unwrap(model)).__name__}")
    return [{"params": groups[""], "lr_scale": 1.0},
            *({"params": groups[p], "lr_scale": float(lr_scales[p])} for p in lr_scales)]


def build_train_state(model: nn.Module, *, lr: float, loss: str = "l1", betas: tuple[float, float] = (0.9, 0.999),
                      weight_decay: float = 0.0, discriminator: nn.Module | None = None, gan_mode: str = "bce",
                      l1_lambda: float = 100.0, bin_weights: torch.Tensor | None = None,
                      lr_scales: dict[str, float] | None = None) -> TrainState:
    """Adam for regression models; for ``loss='gan'`` (pix2pix) Adam(beta1=0.5) on both networks, as
    in the paper. ``lr_scales`` (parameter-name prefix -> multiplier) puts those parameters in their own
    groups with ``lr_scale`` set; group 0 is the rest, at scale 1."""
    if loss == "gan":
        if discriminator is None:
            raise ValueError("loss='gan' needs a discriminator (pix2pix.PatchDiscriminator)")
        betas = (0.5, 0.999)
        d_opt = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    else:
        if loss not in ("l1", "mse", "l1_rebalanced"):
            raise ValueError(f"loss must be 'l1', 'mse', 'l1_rebalanced' or 'gan', got {loss!r}")
        d_opt = None
    # Every parameter, frozen ones included (they get no gradient, so Adam skips them): the optimizer's
    # state then loads unchanged when a later phase unfreezes them.
    opt = torch.optim.Adam(param_groups(model, lr_scales or {}), lr=lr, betas=betas, weight_decay=weight_decay)
    return TrainState(model, opt, loss, discriminator, d_opt, gan_mode, l1_lambda, bin_weights)


def train_step(state: TrainState, l: torch.Tensor, ab: torch.Tensor,
               hints: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """One optimisation step on a batch; returns the losses as floats (``loss`` is the generator's).
    ``hints`` = (ab_hint, hint_mask) for a model that takes them (:func:`colorize_core.hints.simulate_hints`);
    all-zero maps for a hint-free batch, so every parameter takes part in every step (DDP needs that)."""
    state.model.train()
    if state.loss == "gan":
        from .models.pix2pix import discriminator_loss, generator_loss

        state.discriminator.train()
        fake = state.model(l)
        # Discriminator: real (L, ab) vs generated (L, fake ab), generator detached.
        state.d_optimizer.zero_grad(set_to_none=True)
        d_loss = discriminator_loss(state.discriminator, l, ab, fake.detach(), mode=state.gan_mode)
        d_loss.backward()
        state.d_optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        g_adv, g_l1 = generator_loss(state.discriminator, l, ab, fake, mode=state.gan_mode)
        g_loss = g_adv + state.l1_lambda * g_l1
        g_loss.backward()
        state.optimizer.step()
        out = {"loss": g_loss.item(), "g_adv": g_adv.item(), "l1": g_l1.item(), "d_loss": d_loss.item()}
    else:
        state.optimizer.zero_grad(set_to_none=True)
        pred = state.model(l) if hints is None else state.model(l, *hints)
        loss = regression_loss(pred, ab, state.loss, state.bin_weights)
        loss.backward()
        state.optimizer.step()
        out = {"loss": loss.item()}
    if state.ema is not None:
        state.ema.update(state.model, state.step)
    state.step += 1
    return out


# --------------------------------------------------------------------------- inference and validation


def as_preprocessing(pre: Preprocessing | tuple[int, int]) -> Preprocessing:
    """A Preprocessing, or an (H, W) input size with the default resize."""
    return pre if isinstance(pre, Preprocessing) else Preprocessing(tuple(pre))


def colorize_rgb(model: nn.Module, rgb_u8: np.ndarray, preprocessing: Preprocessing | tuple[int, int],
                 hints: list[dict[str, float]] | None = None, hint_radius: int = 2) -> np.ndarray:
    """Full-resolution colorization of one image, exactly as the jobs deliver it (:func:`render.colorize`), so
    training's validation scores are the evaluate job's: uint8 sRGB [H,W,3]. ``hints`` (painted at the model's
    size with ``hint_radius``) go to a model that takes them."""
    return render.colorize(model, [rgb_u8], as_preprocessing(preprocessing), hints=[hints] if hints else None,
                           hint_radius=hint_radius)[0]


def gray_rgb(rgb_u8: np.ndarray) -> np.ndarray:
    """The gray baseline: the original L with ab = 0 (:func:`render.gray`)."""
    return render.gray(rgb_u8)


def evaluate(model: nn.Module | None, images: Iterable[tuple[str, np.ndarray]],
             preprocessing: Preprocessing | tuple[int, int], *, n_hints: int = 0, hint_seed: int = 0,
             hint_radius: int = 2) -> list[dict[str, Any]]:
    """Per-image PSNR / SSIM against the original and colorfulness of the result, with
    :mod:`colorize_core.metrics`. ``model=None`` scores the gray baseline. ``n_hints`` > 0: the model
    also gets that many hints sampled from each original (:func:`colorize_core.hints.sample_hints`,
    seeded by ``hint_seed`` and the image id, as the evaluate job's ``--hints``)."""
    from . import metrics
    from .hints import sample_hints

    pre = as_preprocessing(preprocessing)
    rows = []
    for image_id, rgb in images:
        hints = (sample_hints(rgb, n_hints, image_id, size=pre.input_size, radius=hint_radius, seed=hint_seed)
                 if n_hints else None)
        pred = gray_rgb(rgb) if model is None else colorize_rgb(model, rgb, pre, hints, hint_radius)
        rows.append({"image_id": image_id, "psnr": float(metrics.psnr(pred, rgb)),
                     "ssim": float(metrics.ssim(pred, rgb)), "colorfulness": float(metrics.colorfulness(pred)),
                     "colorfulness_ref": float(metrics.colorfulness(rgb))})
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means over images (PSNR is averaged per image, the usual convention)."""
    keys = ("psnr", "ssim", "colorfulness", "colorfulness_ref")
    out = {k: float(np.mean([r[k] for r in rows])) if rows else math.nan for k in keys}
    out["n"] = len(rows)
    return out


def load_images(uri: str, storage_options=None) -> list[tuple[str, np.ndarray]]:
    """(image_id, uint8 RGB) for every row of a manifest, e.g. the held-out set."""
    return [(r["image_id"], load_rgb_u8(r["uri"], storage_options)) for r in read_manifest(uri, storage_options)]
