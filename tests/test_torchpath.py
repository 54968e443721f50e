"""The torch full-resolution path (colorize_core/torchpath.py) on the CPU device: the same code a GPU actor runs.

Each function is held to the definition it reproduces: F.interpolate for ab upsampling, color.py for Lab -> sRGB,
skimage for PSNR/SSIM (1e-4), metrics.py for colourfulness, and the float64 per-image loop for the whole
compose (40 dB, tests/test_fastpath.py's bound)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import color as skcolor
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorize_core import color, imageio, metrics, torchpath
from colorize_core import render
from colorize_core.models.preprocess import Preprocessing
from tests.test_fastpath import CASES, MIN_PSNR, compact, loop_output  # noqa: F401 - compact is a fixture

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as in a Ray CPU task: on a loaded 2-core machine two OpenMP threads made the
    band-sized kernels 20x slower in CPU time (spinning), which would only measure the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- ab upsampling


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("model_size,size", [((256, 256), (1201, 917)), ((32, 48), (300, 200)),
                                             ((64, 64), (40, 30)), ((16, 16), (16, 16)), ((1, 5), (9, 3))])
def test_banded_upsampling_equals_interpolate(mode, model_size, size):
    ab = torch.from_numpy(RNG.normal(0, 40, (2, *model_size)).astype(np.float32))
    want = F.interpolate(ab[None], size=size, mode=mode, align_corners=False)[0]
    up = torchpath.AbUpsampler(ab, size, mode)
    rows = 7
    got = torch.cat([up.rows(s, min(size[0], s + rows)) for s in range(0, size[0], rows)], dim=1)
    assert got.shape == want.shape
    # torch's own float32 source coordinates round differently row to row (1e-3 at row ~600 of a 256 -> 1201
    # resize of ab values spread +-100): 0.01 ab units is a thousandth of a just-noticeable difference.
    assert float((got - want).abs().max()) < 1e-2


def test_upsampling_rejects_unknown_mode():
    with pytest.raises(ValueError, match="bilinear"):
        torchpath.upsample_taps(10, 5, "nearest")


# --------------------------------------------------------------------------- Lab -> sRGB and L


@pytest.mark.parametrize("encode", ["pow", "table"])
def test_lab_to_srgb_codes_within_one_code_of_color_py(encode):
    n = 200_000
    lab = np.stack([RNG.uniform(0, 100, n), RNG.uniform(-110, 110, n), RNG.uniform(-110, 110, n)], -1).astype(np.float32)
    want = color.lab_to_srgb_uint8(lab).astype(int)
    t = torch.from_numpy(lab)
    got = torchpath.lab_to_srgb_codes(t[:, 0], t[:, 1], t[:, 2], 8, encode).numpy().astype(int)
    diff = np.abs(got - want)
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_sixteen_bit_codes_match_the_float_conversion():
    n = 100_000
    lab = np.stack([RNG.uniform(0, 100, n), RNG.uniform(-90, 90, n), RNG.uniform(-90, 90, n)], -1).astype(np.float32)
    with pytest.warns(UserWarning, match="negative Z"):  # skimage clips them, as color.py does silently
        want = np.floor(np.clip(skcolor.lab2rgb(lab.astype(np.float64)), 0, 1) * 65535 + 0.5)
    t = torch.from_numpy(lab)
    got = torchpath.lab_to_srgb_codes(t[:, 0], t[:, 1], t[:, 2], 16).numpy()
    assert got.dtype == np.int32 and got.min() >= 0 and got.max() <= 65535
    assert np.abs(got - want).max() <= 8  # float32 against float64: 8 of 65535 codes is 0.03 of an 8-bit code


def test_source_l_gray_by_table_and_colour_as_srgb_to_l():
    gray = RNG.integers(0, 256, (33, 41), dtype=np.uint8)
    got = torchpath.source_l(torch.from_numpy(gray)).numpy()
    np.testing.assert_array_equal(got, color.srgb_to_l(np.repeat(gray[..., None], 3, -1)))
    gray16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    got16 = torchpath.source_l(torchpath._as_tensor(gray16, torch.device("cpu"))).numpy()
    np.testing.assert_array_equal(got16, color.srgb_to_l(np.repeat(gray16[..., None], 3, -1)))
    for dtype, top in ((np.uint8, 256), (np.uint16, 65536)):
        rgb = RNG.integers(0, top, (25, 19, 3)).astype(dtype)
        got = torchpath.source_l(torchpath._as_tensor(rgb, torch.device("cpu"))).numpy()
        assert np.abs(got - color.srgb_to_l(rgb)).max() < 1e-3


# --------------------------------------------------------------------------- the whole compose


def _decoded(payload: bytes) -> np.ndarray:
    """The source as the one-channel-for-gray decode gives it: [H, W] for gray, [H, W, 3] for colour."""
    source = imageio.decode_image(payload)
    return np.ascontiguousarray(source.rgb[..., 0]) if source.is_gray else source.rgb


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "2400" in n or "1600" in n else n
                                  for n in CASES])
def test_compose_within_40_db_of_the_float64_loop_and_one_code_of_the_numpy_path(compact, name):
    module, pre = compact
    payload = CASES[name]()
    source = _decoded(payload)
    small = imageio.decode_image(payload).rgb
    with torch.no_grad():
        ab = module(torch.from_numpy(pre.model_l(small))[None, None])[0].numpy()
    loop = loop_output(payload, module, pre.input_size)
    rgb3 = source if source.ndim == 3 else np.repeat(source[..., None], 3, -1)
    numpy_path = render.compose(rgb3, ab, pre)  # the float32 numpy path (gray as RGB: not the table)
    assert metrics.psnr(render.compose(source, ab, pre), loop) >= MIN_PSNR, name  # render's own (table for gray)
    for encode in ("pow", "table"):
        got = torchpath.compose(source, ab, encode=encode, band_pixels=1 << 14)
        assert got.shape == loop.shape and got.dtype == np.uint8
        assert metrics.psnr(got, loop) >= MIN_PSNR, (name, encode)
        assert np.abs(got.astype(int) - numpy_path).max() <= 1, (name, encode)


def test_sixteen_bit_compose_against_float64_and_the_8_bit_output():
    gray16 = (np.linspace(0, 65535, 240 * 320).reshape(240, 320) + RNG.normal(0, 300, (240, 320)))
    gray16 = np.clip(gray16, 0, 65535).astype(np.uint16)
    ab = RNG.normal(0, 25, (2, 16, 16)).astype(np.float32)
    got = torchpath.compose(gray16, ab, mode="bicubic", band_pixels=5000)
    assert got.dtype == np.uint16 and got.shape == (240, 320, 3)
    light = skcolor.rgb2lab(np.repeat(gray16[..., None], 3, -1).astype(np.float64) / 65535)[..., 0]
    ab_full = F.interpolate(torch.from_numpy(ab)[None].double(), size=(240, 320), mode="bicubic",
                            align_corners=False)[0].permute(1, 2, 0).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's note on the negative Z it clips, as color.py does
        want = skcolor.lab2rgb(np.concatenate([light[..., None], ab_full], -1))
    want = np.floor(np.clip(want, 0, 1) * 65535 + 0.5)
    assert torchpath.psnr(got, want.astype(np.uint16)) >= 60  # 16-bit data range
    eight = torchpath.compose(gray16, ab, mode="bicubic", bits=8)
    assert np.abs(got.astype(np.float64) / 257 - eight).max() <= 1.0


def test_bands_cover_the_image_and_stay_within_the_band_size():
    source = RNG.integers(0, 256, (1000, 300), dtype=np.uint8)
    bands = [(s, e, rgb.shape) for s, e, rgb in
             torchpath.compose_bands(source, np.zeros((2, 8, 8), np.float32), band_pixels=3000)]
    assert bands[0][0] == 0 and bands[-1][1] == 1000
    assert all(b[0] == a[1] for a, b in zip(bands, bands[1:]))
    assert all((e - s) * 300 <= 3000 and shape == (e - s, 300, 3) for s, e, shape in bands)


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM), Linux >= 4.0
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_compose_holds_one_band_beside_the_source_and_output():
    """torch's temporaries escape tracemalloc, so the process's peak RSS is measured instead."""
    source = np.zeros((3000, 4000), np.uint8)  # 12 MP gray: 12 MB in, 36 MB out
    ab = RNG.normal(0, 20, (2, 256, 256)).astype(np.float32)
    torchpath.compose(source[:64], ab)  # tables and kernels loaded before the measurement
    if not _peak_rss_reset():
        pytest.skip("no /proc/self/clear_refs to reset the peak RSS")
    before = _peak_rss_bytes()
    out = torchpath.compose(source, ab)
    grown = _peak_rss_bytes() - before
    assert grown < out.nbytes + 24 * 1024**2, f"peak grew {grown / 2**20:.0f} MiB for a {out.nbytes / 2**20:.0f} MiB output"


def test_gray_ab_zero_gives_the_gray_image_back():
    gray = RNG.integers(0, 256, (50, 60), dtype=np.uint8)
    got = torchpath.compose(gray, np.zeros((2, 4, 4), np.float32))
    assert np.abs(got.astype(int) - gray[..., None]).max() <= 1
    assert torchpath.colourfulness(got) < 0.5


# --------------------------------------------------------------------------- scores


def _pair(shape, dtype, noise):
    top = np.iinfo(dtype).max
    ref = RNG.integers(0, top + 1, shape).astype(np.float64)
    ref = np.clip(ref * 0.5 + np.roll(ref, 1, axis=0) * 0.5, 0, top)  # some structure
    pred = np.clip(ref + RNG.normal(0, noise * top, shape), 0, top)
    return pred.astype(dtype), ref.astype(dtype)


SHAPES = [(7, 7), (31, 45), (64, 50), (200, 97), (7, 7, 3), (31, 45, 3), (120, 88, 3)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", SHAPES)
def test_ssim_and_psnr_equal_skimage(shape, dtype):
    pred, ref = _pair(shape, dtype, 0.05)
    channel_axis = -1 if len(shape) == 3 else None
    data_range = np.iinfo(dtype).max
    want_ssim = structural_similarity(ref, pred, channel_axis=channel_axis, data_range=data_range)
    want_psnr = peak_signal_noise_ratio(ref, pred)
    for band_pixels in (1 << 16, 700):  # one band, and many overlapping ones
        assert abs(torchpath.ssim(pred, ref, band_pixels=band_pixels) - want_ssim) < 1e-4
        assert abs(torchpath.psnr(pred, ref, band_pixels=band_pixels) - want_psnr) < 1e-4


def test_scores_on_tensors_and_uint8_match_metrics_py():
    pred, ref = _pair((90, 70, 3), np.uint8, 0.1)
    assert abs(torchpath.ssim(torch.from_numpy(pred), torch.from_numpy(ref)) - metrics.ssim(pred, ref)) < 1e-4
    assert abs(torchpath.psnr(pred, ref) - metrics.psnr(pred, ref)) < 1e-9
    assert torchpath.psnr(ref, ref) == float("inf")


def test_small_images_use_metrics_py_window():
    pred, ref = _pair((5, 9, 3), np.uint8, 0.1)
    assert abs(torchpath.ssim(pred, ref) - metrics.ssim(pred, ref)) < 1e-4
    assert np.isnan(torchpath.ssim(pred[:2], ref[:2]))


def test_colourfulness_equals_metrics_py_and_scales_16_bit():
    rgb = RNG.integers(0, 256, (123, 77, 3), dtype=np.uint8)
    assert abs(torchpath.colourfulness(rgb, band_pixels=999) - metrics.colorfulness(rgb)) < 1e-9
    rgb16 = rgb.astype(np.uint16) * 257
    assert abs(torchpath.colourfulness(rgb16) - metrics.colorfulness(rgb)) < 1e-9


def test_colourfulness_of_packed_rgbx_words_equals_the_rgb_one():
    rgb = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgbx = np.zeros((40, 50, 4), np.uint8)
    rgbx[..., :3] = rgb
    acc = torchpath.Colourfulness()
    acc.add_words(torch.from_numpy(rgbx.view(np.int32)))
    assert abs(acc.value() - metrics.colorfulness(rgb)) < 1e-9


def test_compose_scores_colourfulness_of_the_pixels_it_returns():
    gray = RNG.integers(0, 256, (64, 80), dtype=np.uint8)
    acc = torchpath.Colourfulness()
    got = torchpath.compose(gray, RNG.normal(0, 30, (2, 8, 8)).astype(np.float32), scores=acc, band_pixels=1000)
    assert acc.value() > 1 and abs(acc.value() - metrics.colorfulness(got)) < 1e-9


def test_score_shape_and_dtype_mistakes_are_named():
    a = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        torchpath.ssim(a, a[:9])
    with pytest.raises(ValueError, match="same dtype"):
        torchpath.psnr(a, a.astype(np.uint16))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        torchpath.psnr(a.astype(np.float32), a.astype(np.float32))


# --------------------------------------------------------------------------- nvJPEG hook


def _jpeg(mode: str, **kw) -> bytes:
    im = Image.fromarray(RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_gpu_jpeg_hook_takes_baseline_8_bit_gray_and_ycbcr_only():
    assert torchpath.jpeg_gpu_decodable(_jpeg("L"))
    assert torchpath.jpeg_gpu_decodable(_jpeg("RGB"))
    assert not torchpath.jpeg_gpu_decodable(_jpeg("RGB", progressive=True))
    assert not torchpath.jpeg_gpu_decodable(_jpeg("CMYK"))
    twelve = bytearray(_jpeg("L"))
    sof = twelve.index(b"\xff\xc0")
    twelve[sof + 4] = 12  # sample precision of the frame header
    assert not torchpath.jpeg_gpu_decodable(bytes(twelve))
    assert not torchpath.jpeg_gpu_decodable(imageio.encode_image(np.zeros((8, 8, 3), np.uint8), "png"))
    assert not torchpath.jpeg_gpu_decodable(b"\xff\xd8\xff")


def test_gpu_jpeg_hook_declines_off_cuda_so_pillow_serves():
    data = _jpeg("L")
    assert torchpath.decode_jpeg_on_device(data, "cpu") is None
    assert torchpath.encode_jpeg_on_device(torch.zeros((8, 8, 3), dtype=torch.uint8), 95) is None


def test_the_device_path_of_render_and_its_scores_on_the_cpu_device():
    """What a GPU actor runs (render.compose on a device, torchpath.compute_metrics), on the CPU device: within
    the fidelity bound of the float64 loop's maths, and the scores within 1e-4 of metrics.compute_metrics."""
    from tests.test_render import _reference

    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, (61, 83), dtype=np.uint8)
    colour = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for mode in ("bilinear", "bicubic"):
        pre = Preprocessing((12, 12), ab_upsample=mode)
        ab = rng.normal(0, 25, (2, 12, 12)).astype(np.float32)
        for source in (gray, colour):
            rgb3 = source if source.ndim == 3 else np.repeat(source[..., None], 3, -1)
            want = np.floor(_reference(rgb3, ab, mode) * 255 + 0.5).astype(np.uint8)
            acc = torchpath.Colourfulness()
            got = render.compose(source, ab, pre, device="cpu", scores=acc, is_gray=source.ndim == 2)
            assert got.shape == want.shape and metrics.psnr(got, want) >= 60, mode
            assert acc.value() == pytest.approx(metrics.colorfulness(got), abs=1e-9)
            on_device = torchpath.compute_metrics(got, want, "cpu")
            on_host = metrics.compute_metrics(got, want)
            for name, value in on_host.items():
                assert on_device[name] == pytest.approx(value, abs=1e-4), name
    assert torchpath.compute_metrics(gray[..., None].repeat(3, -1), None, "cpu", 1.5)["colorfulness"] == 1.5
