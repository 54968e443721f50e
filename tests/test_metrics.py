"""colorize_core.metrics pinned against scikit-image's definitions."""

import math

import numpy as np
import pytest
from skimage import data
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorize_core.metrics import (
    METRIC_NAMES,
    colorfulness,
    compute_metrics,
    compute_metrics_batch,
    deltae2000,
    psnr,
    rmse,
    ssim,
)

REAL_IMAGES = ["astronaut", "coffee", "chelsea"]


def _noisy(ref: np.ndarray, amplitude: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, ref.shape)
    return np.clip(ref.astype(int) + noise, 0, 255).astype(np.uint8)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(rgb.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)


def _pairs():
    """(pred, ref) pairs that look like colorization outputs: noise, desaturation, hue swap."""
    for name in REAL_IMAGES:
        ref = getattr(data, name)()
        yield name + "-noise", _noisy(ref, 20), ref
        yield name + "-gray", _gray(ref), ref
        yield name + "-swap", np.ascontiguousarray(ref[..., ::-1]), ref


PAIRS = list(_pairs())
PAIR_IDS = [p[0] for p in PAIRS]


@pytest.mark.parametrize("_id, pred, ref", PAIRS, ids=PAIR_IDS)
def test_psnr_rmse_match_skimage(_id, pred, ref):
    assert abs(psnr(pred, ref) - peak_signal_noise_ratio(ref, pred, data_range=255)) < 1e-6
    expected_rmse = math.sqrt(np.mean((pred.astype(np.float64) - ref) ** 2))
    assert abs(rmse(pred, ref) - expected_rmse) < 1e-6


@pytest.mark.parametrize("_id, pred, ref", PAIRS, ids=PAIR_IDS)
def test_ssim_matches_skimage(_id, pred, ref):
    expected = structural_similarity(ref, pred, channel_axis=-1, data_range=255)
    assert abs(ssim(pred, ref) - expected) < 1e-6


@pytest.mark.parametrize("_id, pred, ref", PAIRS, ids=PAIR_IDS)
def test_deltae2000_matches_skimage(_id, pred, ref):
    expected = deltaE_ciede2000(rgb2lab(ref), rgb2lab(pred)).mean()
    assert abs(deltae2000(pred, ref) - expected) < 1e-3


def test_identical_images():
    ref = data.chelsea()
    assert psnr(ref, ref) == math.inf
    assert rmse(ref, ref) == 0.0
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert deltae2000(ref, ref) == 0.0


def test_psnr_known_value():
    ref = np.zeros((4, 4, 3), np.uint8)
    pred = np.full((4, 4, 3), 255, np.uint8)  # mse = 255^2 -> 0 dB
    assert psnr(pred, ref) == pytest.approx(0.0, abs=1e-12)
    assert rmse(pred, ref) == pytest.approx(255.0)


@pytest.mark.parametrize(
    "shape, win",
    [((7, 7, 3), 7), ((6, 40, 3), 5), ((5, 5, 3), 5), ((40, 4, 3), 3), ((3, 3, 3), 3)],
)
def test_ssim_small_images_shrink_the_window(shape, win):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, shape, dtype=np.uint8)
    pred = _noisy(ref, 30)
    expected = structural_similarity(ref, pred, win_size=win, channel_axis=-1, data_range=255)
    assert abs(ssim(pred, ref) - expected) < 1e-6


@pytest.mark.parametrize("shape", [(2, 2, 3), (1, 50, 3), (50, 2, 3)])
def test_ssim_below_three_pixels_is_nan(shape):
    img = np.zeros(shape, np.uint8)
    assert math.isnan(ssim(img, img))
    assert math.isnan(compute_metrics(img, img)["ssim"])


def _colorfulness_reference(rgb: np.ndarray) -> float:
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return math.sqrt(np.std(rg) ** 2 + np.std(yb) ** 2) + 0.3 * math.sqrt(
        np.mean(rg) ** 2 + np.mean(yb) ** 2
    )


def test_colorfulness():
    for name in REAL_IMAGES:
        rgb = getattr(data, name)()
        assert colorfulness(_gray(rgb)) == 0.0
        value = colorfulness(rgb)
        assert value > 10.0
        assert abs(value - _colorfulness_reference(rgb)) < 1e-9
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255  # rg = 255, yb = 127.5, no spread
    assert colorfulness(red) == pytest.approx(0.3 * math.hypot(255.0, 127.5))


def test_colorfulness_on_a_lattice_is_the_lattice_s_and_near_the_whole_image_s():
    for name in REAL_IMAGES:
        rgb = getattr(data, name)()
        lattice = colorfulness(rgb, step=2)
        assert lattice == pytest.approx(_colorfulness_reference(rgb[::2, ::2]), abs=1e-9)
        assert lattice == pytest.approx(colorfulness(rgb), rel=5e-3)
        assert compute_metrics(rgb, None, colorfulness_step=2)["colorfulness"] == lattice
    with pytest.raises(ValueError, match="step"):
        colorfulness(np.zeros((4, 4, 3), np.uint8), step=0)


def test_colorfulness_is_signed():
    # Half red, half green: with abs(rg) this would look uniform (no spread, large mean).
    img = np.zeros((8, 8, 3), np.uint8)
    img[:4, :, 0] = 200
    img[4:, :, 1] = 200
    assert colorfulness(img) == pytest.approx(_colorfulness_reference(img))
    assert colorfulness(img) == pytest.approx(math.sqrt(200.0**2 + 0.0) + 0.3 * 100.0)


def test_bad_inputs_raise():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="uint8"):
        rmse(a, a.astype(np.uint16))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        deltae2000(a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        colorfulness(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        compute_metrics(a, a[:4])


def test_compute_metrics():
    ref = data.coffee()
    pred = _noisy(ref, 10)
    row = compute_metrics(pred, ref)
    assert tuple(row) == METRIC_NAMES == ("psnr", "ssim", "rmse", "colorfulness", "deltae2000")
    assert all(isinstance(v, float) for v in row.values())
    assert row["psnr"] == psnr(pred, ref)
    assert row["ssim"] == ssim(pred, ref)
    assert row["rmse"] == rmse(pred, ref)
    assert row["colorfulness"] == colorfulness(pred)
    assert row["deltae2000"] == deltae2000(pred, ref)

    no_ref = compute_metrics(pred)
    assert tuple(no_ref) == METRIC_NAMES
    assert no_ref["colorfulness"] == colorfulness(pred)
    assert [no_ref[k] for k in METRIC_NAMES if k != "colorfulness"] == [None] * 4


def test_compute_metrics_batch_mixed_sizes_and_missing_refs():
    refs = [data.chelsea(), data.coffee()[:100, :120], None, data.chelsea()[:2, :9]]
    preds = [_noisy(r if r is not None else data.astronaut()[:64, :64], 15) for r in refs]
    out = compute_metrics_batch(preds, refs)
    assert tuple(out) == METRIC_NAMES
    for name, col in out.items():
        assert col.dtype == np.float64 and col.shape == (4,)
        for i, (pred, ref) in enumerate(zip(preds, refs)):
            expected = compute_metrics(pred, ref)[name]
            if expected is None or math.isnan(expected):
                assert math.isnan(col[i]), (name, i)
            else:
                assert col[i] == expected, (name, i)
    assert np.isnan(out["psnr"][2]) and out["colorfulness"][2] > 0
    assert np.isnan(out["ssim"][3]) and np.isfinite(out["psnr"][3])

    no_refs = compute_metrics_batch(preds[:2], None)
    assert np.isnan(no_refs["psnr"]).all() and np.isfinite(no_refs["colorfulness"]).all()
    empty = compute_metrics_batch([], [])
    assert all(col.shape == (0,) for col in empty.values())


def test_compute_metrics_batch_errors_name_the_row():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="same length"):
        compute_metrics_batch([a, a], [a])
    with pytest.raises(ValueError, match="image 1"):
        compute_metrics_batch([a, a], [a, a[:, :4]])
