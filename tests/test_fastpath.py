"""The job's fast path (colorize_core.render) against the float64 per-image loop: every output within 40 dB PSNR
(RGB uint8)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color as skcolor
from skimage import data

from colorize_core import imageio, metrics, render
from colorize_core.models import load_model
from colorize_core.models.preprocess import Preprocessing

MIN_PSNR = 40.0


def loop_output(payload: bytes, module: torch.nn.Module, input_size: tuple[int, int]) -> np.ndarray:
    """What a single-image script does: PIL decode, float64 skimage Lab at full resolution, bicubic resize to
    the model size, batch-1 float32 forward, bilinear ab upsampling, lab2rgb, rounded to uint8."""
    rgb = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    lab = skcolor.rgb2lab(rgb)
    small = np.asarray(Image.fromarray(rgb).resize(input_size[::-1], Image.BICUBIC))
    l_small = skcolor.rgb2lab(small)[..., 0]
    with torch.no_grad():
        ab = module(torch.from_numpy(l_small).float()[None, None])
        ab = torch.nn.functional.interpolate(ab, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
    out = skcolor.lab2rgb(np.concatenate([lab[..., :1], ab.permute(1, 2, 0).double().numpy()], axis=-1))
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def fast_output(payload: bytes, module: torch.nn.Module, pre: Preprocessing) -> np.ndarray:
    """The job's stages on the same bytes: reduced decode -> model L -> forward -> compose."""
    small, geometry = render.decode_reduced(payload, pre.input_size, imageio.DEFAULT_MAX_PIXELS)
    ab = render.predict_ab(module, pre.model_l(small)[None, None])[0]
    source = imageio.decode_image(payload)
    assert source.rgb.shape[:2] == geometry
    return render.compose(source.rgb, ab, pre, is_gray=source.is_gray)


def _jpeg(rgb: np.ndarray, size: tuple[int, int], gray: bool = True, exif_rotate: bool = False) -> bytes:
    im = Image.fromarray(rgb).resize(size, Image.BICUBIC)
    im = im.convert("L") if gray else im
    buf = io.BytesIO()
    if exif_rotate:
        exif = Image.Exif()
        exif[0x0112] = 6
        im.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    else:
        im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def compact():
    torch.set_num_threads(2)
    module, info = load_model("compact")
    assert info.preprocessing.ab_upsample == "bilinear" and info.preprocessing.resize == "bicubic"  # as the loop
    return module.eval(), info.preprocessing


CASES = {
    "gray 1600x1200 (DCT 1/2)": lambda: _jpeg(data.astronaut(), (1600, 1200)),
    "gray 2400x1700 (DCT 1/4)": lambda: _jpeg(data.coffee(), (2400, 1700)),
    "gray 577x433 (no reduction)": lambda: _jpeg(data.chelsea(), (577, 433)),
    "colour 1200x900": lambda: _jpeg(data.rocket(), (1200, 900), gray=False),
    "gray PNG 900x700 (full decode)": lambda: imageio.encode_image(
        np.asarray(Image.fromarray(data.camera()).resize((900, 700)).convert("RGB")), "png"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_within_40_db_of_the_float32_loop(compact, name):
    module, pre = compact
    payload = CASES[name]()
    loop, fast = loop_output(payload, module, pre.input_size), fast_output(payload, module, pre)
    assert fast.shape == loop.shape and fast.dtype == np.uint8
    assert metrics.psnr(fast, loop) >= MIN_PSNR, name


def test_reduced_decode_applies_exif_orientation_and_reports_full_geometry():
    payload = _jpeg(data.camera()[..., None].repeat(3, 2), (1400, 1000), exif_rotate=True)
    small, geometry = render.decode_reduced(payload, (256, 256), imageio.DEFAULT_MAX_PIXELS)
    full = imageio.decode_image(payload).pixels  # one channel for a gray source, as the reduced decode
    assert geometry == full.shape[:2] == (1400, 1000) and small.ndim == full.ndim
    assert small.shape[0] > small.shape[1] and min(small.shape[:2]) >= 512
    reduced = np.asarray(Image.fromarray(full).resize(small.shape[1::-1], Image.BOX))
    assert np.abs(small.astype(float) - reduced).mean() < 3  # the same picture, same way up


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_compose_bounds_its_temporaries(mode):
    """A band of rows at a time: the only full-size arrays are the source and the output."""
    import tracemalloc

    rgb = np.zeros((3000, 4000, 3), np.uint8)  # 12 MP
    ab = np.zeros((2, 256, 256), np.float32)
    tracemalloc.start()
    render.compose(rgb, ab, Preprocessing((256, 256), ab_upsample=mode), is_gray=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    output = rgb.nbytes
    assert peak < output + 16 * 1024**2, f"peak {peak / 2**20:.0f} MiB for a {output / 2**20:.0f} MiB output"
