"""colorize_core.training without Ray: data sampling, train steps that learn, checkpoints, validation."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from colorize_core import color, metrics, training
from colorize_core.models import checkpoint, load_model
from colorize_core.models.pix2pix import PatchDiscriminator, Pix2PixGenerator
from colorize_core.models.unet import UNetColorizer


def make_images(tmp_path, n=4, size=(40, 48), seed=0) -> str:
    """Colour images whose hue depends on the local brightness pattern (learnable), and a manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = ((xx // (4 + i)) % 2).astype(np.float32)
        rgb = np.stack([200 * stripes + 30, 60 + 40 * rng.random((h, w)), 220 * (1 - stripes) + 20], -1)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
        rows.append({"image_id": f"img{i}", "uri": str(path)})
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return str(manifest)


def test_lab_image_set_samples_augmented_crops(tmp_path):
    manifest = make_images(tmp_path, n=3)
    data = training.LabImageSet.from_manifest(manifest, min_side=64)
    assert data.image_ids == ["img0", "img1", "img2"] and min(data.images[0].shape[-2:]) == 64
    l, ab = data.sample(5, 32, np.random.default_rng(0))
    assert l.shape == (5, 1, 32, 32) and ab.shape == (5, 2, 32, 32)
    assert l.dtype == ab.dtype == torch.float32 and 0 <= l.min() and l.max() <= 100 and ab.abs().max() > 20
    shard = training.LabImageSet.from_manifest(manifest, rank=1, world_size=2)
    assert shard.image_ids == ["img1"]
    # Whole-image crop at scale 1 without flip: the resized image itself.
    lab = data.images[0]
    full = training.random_crop(lab[:, :64, :64], 16, np.random.default_rng(0), scale=(1.0, 1.0), flip=False)
    assert torch.allclose(full, training.resize(lab[None, :, :64, :64], size=(16, 16))[0])


def test_crop_ratio_shows_the_model_images_squeezed_as_inference_does():
    """Channel 1 holds each pixel's column, channel 2 its row: a crop's spans show its shape."""
    h, w = 300, 400
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    lab = torch.stack([torch.full((h, w), 50.0), cols, rows])
    rng = np.random.default_rng(0)
    for ratio, lo, hi in (((1.0, 1.0), 0.97, 1.03), ((2.0, 2.0), 1.9, 2.1), ((0.5, 0.5), 0.47, 0.53)):
        crop = training.random_crop(lab, 32, rng, scale=(0.5, 0.5), flip=False, ratio=ratio)
        assert crop.shape == (3, 32, 32)
        width, height = float(crop[1].max() - crop[1].min()), float(crop[2].max() - crop[2].min())
        assert lo < width / height < hi, (ratio, width, height)
    for _ in range(50):  # never larger than the image, whatever the draw
        crop = training.random_crop(lab, 32, rng, scale=(0.3, 1.0), ratio=(0.5, 2.0), flip=False)
        assert crop[1].min() >= 0 and crop[1].max() <= w - 1 and crop[2].max() <= h - 1


def test_weight_ema_averages_and_resumes_with_raw_weights(tmp_path):
    torch.manual_seed(0)
    data = training.LabImageSet.from_manifest(make_images(tmp_path))
    l, ab = data.sample(4, 32, np.random.default_rng(0))
    model = UNetColorizer(base_channels=8, depth=2)
    state = training.build_train_state(model, lr=1e-2, loss="l1")
    state.ema = training.WeightEMA(model, 0.9)
    assert state.ema.decay_at(0) == 0.1 and state.ema.decay_at(80) == 0.9  # warm-up, then the decay
    state.step = 100
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training.train_step(state, l, ab)
    after = model.state_dict()
    for key, avg in state.ema.module.state_dict().items():
        if avg.is_floating_point():
            assert torch.allclose(avg, 0.9 * before[key] + 0.1 * after[key], atol=1e-6), key
    assert state.published is state.ema.module
    for _ in range(3):
        training.train_step(state, l, ab)
    buf = io.BytesIO()  # through bytes, as train_state.pt / weights.pt go (state_dict() shares tensors)
    torch.save((state.state_dict(), state.published.state_dict()), buf)
    buf.seek(0)
    saved, published_state = torch.load(buf)
    published = UNetColorizer(base_channels=8, depth=2)
    published.load_state_dict(published_state)
    # A fresh state resumed from (train state, published weights) continues exactly.
    model2 = UNetColorizer(base_channels=8, depth=2)
    state2 = training.build_train_state(model2, lr=1e-2, loss="l1")
    state2.ema = training.WeightEMA(model2, 0.9)
    state2.load_state_dict(saved, published=published)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(published.state_dict().values(), state2.published.state_dict().values()):
        assert torch.equal(a, b)
    training.train_step(state, l, ab), training.train_step(state2, l, ab)
    for a, b in zip(state.published.state_dict().values(), state2.published.state_dict().values()):
        assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="decay"):
        training.WeightEMA(model, 1.0)


def test_lab_pair_matches_color_module(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    lab = training.rgb_to_lab_chw(rgb)
    assert lab.shape == (3, 8, 8) and np.allclose(lab.transpose(1, 2, 0), color.srgb_to_lab(rgb))


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_a_few_regression_steps_lower_the_loss(tmp_path, loss):
    torch.manual_seed(0)
    data = training.LabImageSet.from_manifest(make_images(tmp_path))
    l, ab = data.sample(8, 32, np.random.default_rng(0))
    state = training.build_train_state(UNetColorizer(base_channels=8, depth=2), lr=3e-3, loss=loss)
    first = training.train_step(state, l, ab)["loss"]
    for _ in range(25):
        last = training.train_step(state, l, ab)["loss"]
    assert state.step == 26 and last < 0.5 * first


def test_hint_steps_train_only_the_hint_layers_of_a_frozen_backbone_at_their_own_rate(tmp_path):
    """A guided model's step takes simulated hints; lr_scales puts the hint layers in their own optimizer
    group; with the backbone frozen only they move, and the backbone's BatchNorm statistics stay."""
    from colorize_core.hints import HintSimulation, simulate_hints
    from colorize_core.models.effnet_guided import GuidedEffNetUNet

    torch.manual_seed(0)
    model = GuidedEffNetUNet(decoder_channels=[16, 8]).freeze_backbone(True).train()
    state = training.build_train_state(model, lr=1e-2, loss="l1", lr_scales={"hint_": 10.0})
    groups = state.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    hint_params = {id(p) for n, p in model.named_parameters() if n.startswith("hint_")}
    assert {id(p) for p in groups[1]["params"]} == hint_params and len(hint_params) == 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = training.LabImageSet.from_manifest(make_images(tmp_path, size=(64, 64)))
    rng = np.random.default_rng(0)
    l, ab = data.sample(4, 64, rng)
    hints = simulate_hints(ab, rng, HintSimulation(p=0.2, hint_free_batches=0.0))
    assert hints[1].sum() > 0
    training.train_step(state, l, ab, hints)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {k for k in before if k.startswith("hint_")}, sorted(moved)[:5]
    with pytest.raises(ValueError, match="match no parameter"):
        training.build_train_state(model, lr=1e-3, lr_scales={"nosuch.": 2.0})


def test_pix2pix_steps_update_both_networks_and_lower_l1(tmp_path):
    torch.manual_seed(0)
    data = training.LabImageSet.from_manifest(make_images(tmp_path))
    l, ab = data.sample(4, 32, np.random.default_rng(0))
    gen, disc = Pix2PixGenerator(ngf=8, num_downs=5, dropout=0.0), PatchDiscriminator(ndf=8)
    d0 = [p.detach().clone() for p in disc.parameters()]
    state = training.build_train_state(gen, lr=2e-3, loss="gan", discriminator=disc, gan_mode="lsgan")
    first = training.train_step(state, l, ab)
    assert set(first) == {"loss", "g_adv", "l1", "d_loss"}
    for _ in range(15):
        last = training.train_step(state, l, ab)
    assert last["l1"] < first["l1"]
    assert any(not torch.equal(a, b) for a, b in zip(d0, disc.parameters()))
    with pytest.raises(ValueError, match="discriminator"):
        training.build_train_state(gen, lr=1e-3, loss="gan")


def test_checkpoint_round_trip_gives_identical_outputs_and_resumable_state(tmp_path):
    torch.manual_seed(0)
    model = UNetColorizer(base_channels=4, depth=2)
    state = training.build_train_state(model, lr=1e-3)
    l = torch.rand(2, 1, 16, 16) * 100
    training.train_step(state, l, torch.randn(2, 2, 16, 16) * 10)
    uri = str(tmp_path / "ckpt")
    checkpoint.save_train_state(uri, state.state_dict())
    checkpoint.save_checkpoint(uri, model, architecture="unet", arguments={"base_channels": 4, "depth": 2},
                               input_size=(256, 256), step=state.step)
    loaded, info = load_model(uri)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(l), model(l))
    assert info.name == "unet" and checkpoint.read_checkpoint_meta(uri)["step"] == 1
    fresh = training.build_train_state(UNetColorizer(base_channels=4, depth=2), lr=1e-3)
    fresh.load_state_dict(checkpoint.load_train_state(uri))
    assert fresh.step == 1 and fresh.optimizer.state_dict()["state"][0]["step"] == 1
    assert checkpoint.load_train_state(str(tmp_path / "nothing")) is None


def test_evaluate_scores_model_and_gray_baseline(tmp_path):
    images = training.load_images(make_images(tmp_path, n=2))
    gray = training.evaluate(None, images, (32, 32))
    assert [r["image_id"] for r in gray] == ["img0", "img1"]
    assert gray[0]["psnr"] == pytest.approx(metrics.psnr(training.gray_rgb(images[0][1]), images[0][1]))
    assert gray[0]["colorfulness"] < 1 < gray[0]["colorfulness_ref"]
    model = UNetColorizer(base_channels=4, depth=2)
    rows = training.evaluate(model, images, (32, 32))
    summary = training.summarize(rows)
    assert summary["n"] == 2 and np.isfinite(summary["psnr"]) and 0 < summary["ssim"] <= 1
    pred = training.colorize_rgb(model, images[0][1], (32, 32))
    assert pred.shape == images[0][1].shape and pred.dtype == np.uint8
    # The gray baseline keeps the original's luminance (in gamut, so up to uint8 rounding).
    gray_l = color.srgb_to_lab(training.gray_rgb(images[0][1]))[..., 0]
    assert np.abs(gray_l - color.srgb_to_lab(images[0][1])[..., 0]).max() < 0.5
