"""Per-image quality metrics of a colorized RGB image against its reference.

All metrics take uint8 ``[H, W, 3]`` images, i.e. exactly what is encoded and shipped, so
the scores describe the delivered file, not a float intermediate. The full-reference
metrics reproduce scikit-image's definitions (tests pin them to 1e-6), so numbers are
comparable with published colorization results that use skimage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.color import deltaE_ciede2000
from skimage.metrics import structural_similarity

from colorize_core.color import srgb_to_lab
from colorize_core.schema import SCORES

__all__ = [
    "METRIC_NAMES",
    "psnr",
    "ssim",
    "rmse",
    "colorfulness",
    "deltae2000",
    "compute_metrics",
    "compute_metrics_batch",
]

METRIC_NAMES: tuple[str, ...] = SCORES  # declared once, with the metrics table's types, in schema.py

# uint8 images: the peak signal is the full code range, independent of image content
# (skimage would infer the same from the dtype; passing it explicitly pins it).
_DATA_RANGE = 255.0
_SSIM_WIN = 7  # skimage's default uniform window


def _check_image(x: np.ndarray, name: str) -> None:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise ValueError(
            f"{name} must be uint8, got {x.dtype}; quantise first (e.g. with "
            "colorize_core.color.lab_to_srgb_uint8) so metrics score the delivered image."
        )
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(
            f"{name} must have shape [H, W, 3], got {x.shape}; expand gray images with "
            "np.repeat(x[..., None], 3, axis=-1)."
        )


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    _check_image(pred, "pred")
    _check_image(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(
            f"pred and ref must have the same shape, got pred {pred.shape} and ref "
            f"{ref.shape}; resize the prediction to the reference size before scoring."
        )


def _mse(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared error from an exact integer sum of squares.

    Differences of uint8 values squared fit int32 and their sum fits int64, so this is
    exact (skimage's float64 mean agrees to ~1e-16) and half the memory of float64.
    """
    d = np.subtract(pred, ref, dtype=np.int32)
    np.multiply(d, d, out=d)
    return int(d.sum(dtype=np.int64)) / d.size


def _psnr_from_mse(mse: float) -> float:
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(_DATA_RANGE**2 / mse)


def psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, with peak 255 (``data_range=255``).

    The peak is the uint8 code range, not ``ref.max() - ref.min()``, so a dark reference
    is not rewarded or penalised for its own contrast. Identical images give ``inf``.
    """
    _check_pair(pred, ref)
    return _psnr_from_mse(_mse(pred, ref))


def rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    """Root mean squared error over all pixels and channels, in 0..255 units."""
    _check_pair(pred, ref)
    return math.sqrt(_mse(pred, ref))


def _ssim_window(height: int, width: int) -> int | None:
    """skimage's 7x7 window, shrunk to the largest odd size (>= 3) that fits small images.

    skimage raises for images under 7 pixels on a side; a thumbnail-sized crop in a batch
    should still get a score, so the window shrinks instead. Below 3 pixels there is no
    neighbourhood to compare and the caller gets NaN.
    """
    side = min(height, width, _SSIM_WIN)
    if side % 2 == 0:
        side -= 1
    return side if side >= 3 else None


def ssim(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean structural similarity over the three RGB channels (skimage defaults).

    Equal to ``structural_similarity(ref, pred, channel_axis=-1, data_range=255)``: a 7x7
    uniform window, K1=0.01, K2=0.03, sample covariance. skimage is called directly: an
    own vectorised version over the channels measured no faster (both are dominated by
    scipy's box filters). Images under 7 pixels on a side use the largest odd window
    that fits (see :func:`_ssim_window`); under 3 pixels the result is NaN.
    """
    _check_pair(pred, ref)
    win = _ssim_window(ref.shape[0], ref.shape[1])
    if win is None:
        return math.nan
    return float(
        structural_similarity(
            ref, pred, win_size=win, channel_axis=-1, data_range=_DATA_RANGE
        )
    )


def colorfulness(rgb: np.ndarray, step: int = 1) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M3 of a uint8 RGB image (0 for gray).

    ``step`` > 1 scores the regular lattice of every ``step``-th row and column (the colorize job: 2, a
    quarter of the pixels at a quarter of the cost; M3 is a statistic of the whole opponent-colour
    distribution, which the lattice samples evenly: 0.06% off on uniform noise, less on photographs,
    against the JPEG's own 0.02-0.17%).

    ``rg = R - G`` and ``yb = (R + G) / 2 - B`` are kept signed: the metric is the spread
    plus the offset of the opponent-colour distribution, and taking ``abs`` (as some
    popular snippets do) folds red onto green and yellow onto blue, which shrinks the
    spread of images containing both. Computed in float64 on the 0..255 values, as in the
    paper, so scores are comparable with published ones.
    """
    _check_image(rgb, "rgb")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if step > 1:
        rgb = rgb[::step, ::step]
    if rgb.dtype == np.uint8:
        return _colorfulness_uint8(rgb)
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    std_root = math.sqrt(rg.var() + yb.var())
    mean_root = math.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(std_root + 0.3 * mean_root)


_RG_LEVELS = np.arange(-255, 256, dtype=np.int64)  # R - G
_YB2_LEVELS = np.arange(-510, 511, dtype=np.int64)  # R + G - 2B


def _colorfulness_uint8(rgb: np.ndarray, rows: int = 256) -> float:
    """The same statistic from exact integer sums over bands of rows (no full-size float64 planes):
    ``rg = R - G`` and ``2 yb = R + G - 2B`` are small integers, so their histograms give the sums and sums
    of squares exactly (in int64), in int16 passes a third of the cost of squaring every pixel; a gray image
    (rg = yb = 0 everywhere) gives 0. Strided views (RGBX words' ``[H, W, 3]``) are read as they are."""
    n = rgb.shape[0] * rgb.shape[1]
    h_rg = np.zeros(_RG_LEVELS.size, np.int64)
    h_yb = np.zeros(_YB2_LEVELS.size, np.int64)
    for start in range(0, rgb.shape[0], rows):
        band = rgb[start: start + rows]
        r, g, b = (band[..., c].astype(np.int16) for c in range(3))
        rg = r - g
        rg += 255
        yb2 = r + g
        yb2 -= b
        yb2 -= b
        yb2 += 510
        h_rg += np.bincount(rg.ravel(), minlength=_RG_LEVELS.size)
        h_yb += np.bincount(yb2.ravel(), minlength=_YB2_LEVELS.size)
    s_rg, s_rg2 = int(h_rg @ _RG_LEVELS), int(h_rg @ (_RG_LEVELS * _RG_LEVELS))
    s_yb, s_yb2 = int(h_yb @ _YB2_LEVELS), int(h_yb @ (_YB2_LEVELS * _YB2_LEVELS))
    if s_rg2 == 0 and s_yb2 == 0:
        return 0.0
    var_rg = (s_rg2 - s_rg * s_rg / n) / n
    var_yb = (s_yb2 - s_yb * s_yb / n) / n / 4.0
    std_root = math.sqrt(max(var_rg + var_yb, 0.0))
    mean_root = math.sqrt((s_rg / n) ** 2 + (s_yb / n / 2.0) ** 2)
    return float(std_root + 0.3 * mean_root)


def deltae2000(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference between the images' Lab values (D65).

    CIEDE2000 rather than Euclidean Lab distance because it is perceptually uniform
    across hue and chroma, which is what colorization errors are about. Lab comes from
    :func:`colorize_core.color.srgb_to_lab` (skimage's Lab, ~10x faster) and stays float32
    through skimage's deltaE_ciede2000, which halves its run time; the mean differs from
    the all-float64 skimage computation by ~1e-6.
    """
    _check_pair(pred, ref)
    return float(deltaE_ciede2000(srgb_to_lab(ref), srgb_to_lab(pred)).mean(dtype=np.float64))


def compute_metrics(pred: np.ndarray, ref: np.ndarray | None = None,
                    colorfulness_step: int = 1) -> dict[str, float | None]:
    """All metrics of one image, keyed by :data:`METRIC_NAMES`; colourfulness on every
    ``colorfulness_step``-th row and column (:func:`colorfulness`).

    Without a reference (the usual case for genuinely gray archive scans) only the
    no-reference colourfulness is computed and the other entries are None.
    """
    if ref is None:
        _check_image(pred, "pred")
        return {
            "psnr": None,
            "ssim": None,
            "rmse": None,
            "colorfulness": colorfulness(pred, colorfulness_step),
            "deltae2000": None,
        }
    _check_pair(pred, ref)
    mse = _mse(pred, ref)
    return {
        "psnr": _psnr_from_mse(mse),
        "ssim": ssim(pred, ref),
        "rmse": math.sqrt(mse),
        "colorfulness": colorfulness(pred, colorfulness_step),
        "deltae2000": deltae2000(pred, ref),
    }


def compute_metrics_batch(
    preds: Sequence[np.ndarray], refs: Sequence[np.ndarray | None] | None = None
) -> dict[str, np.ndarray]:
    """Metrics of a batch as float64 columns of length ``len(preds)``, NaN where no reference.

    A plain loop: images in a batch differ in size, and when they do not, stacking them
    would only save Python overhead that SSIM and CIEDE2000 (tens of ms per image) dwarf.
    ``refs=None`` means no reference for any image. A pred/ref shape mismatch raises with
    the row index, since it means the caller paired the wrong images.
    """
    n = len(preds)
    if refs is None:
        refs = [None] * n
    if len(refs) != n:
        raise ValueError(f"preds and refs must have the same length, got {n} and {len(refs)}")
    out = {name: np.full(n, np.nan, dtype=np.float64) for name in METRIC_NAMES}
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        try:
            row = compute_metrics(pred, ref)
        except ValueError as err:
            raise ValueError(f"image {i}: {err}") from err
        for name, value in row.items():
            if value is not None:
                out[name][i] = value
    return out
