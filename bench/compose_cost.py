"""What the full-resolution compose costs on one CPU core, kernel by kernel, measured side by side in one run.

The compose turns a decoded 8-bit gray scan (one channel) and the model's ab (256x256, the ``compact`` model's
real prediction for the image, so its smoothness is real) into the sRGB uint8 image that is encoded. Each row
is one way to do one step, timed on the same image in this one process with torch at one thread (a Ray CPU
task's share), best of ``--repeat`` runs of CPU time (``time.process_time``): a loaded machine changes the
figures, much less their ratios, which are what to read. Fidelity is against the float64 reference (the
per-image loop: skimage Lab at full resolution, ab by ``F.interpolate`` in float64, ``lab2rgb``, rounded).

Steps:

* **ab upsampling** (two float32 planes at full resolution): torch's separable banded pass (the job today),
  ``F.interpolate`` on the whole image, Pillow's C resampling in mode ``F`` (whole, or across once at model
  height and then each band's rows through ``box=``: bounded memory), Pillow's 8-bit ``L`` resampling of ab
  stored as ``a + 128`` (fixed point: indices for the table below, no float at all).
* **Lab -> sRGB** (L from the gray table, a and b given): numpy exact (``color.lab_to_srgb_uint8``), numpy
  planes with the 16-bit encode table (the job today), torch kernels (``colorize_core.torchpath``, pow or
  table), ``torch.compile``'d (one fused loop; where a C++ compiler exists), and a ``[a][b][gray]`` table of
  RGBX words (a, b rounded to 1 unit, or 2): one gather per pixel, cache-friendly because ab is smooth.
* **whole compose** (upsampling + conversion + interleave) for the combinations worth having.
* **around it**: the full decode (one channel vs today's three), the JPEG encode at quality 95 4:4:4 (from
  RGB, or straight from the RGBX words), colourfulness (exact integer sums, on RGB or on RGBX words), the read-back decode the job does today, SSIM/PSNR
  (skimage vs torch).

    python bench/compose_cost.py                     # 1600x1200 (1.9 MP)
    python bench/compose_cost.py --size 4000x3000 --repeat 3

Prints the CPU model and flags, then one table; not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import color as skcolor
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import cpu_description  # noqa: E402
from colorize_core import color, graytable, imageio, metrics, render, torchpath  # noqa: E402
from colorize_core.models.preprocess import Preprocessing  # noqa: E402
from colorize_core.models import load_model  # noqa: E402

BAND = 1 << 16  # pixels per band, as the job's compose


def best_ms(fn, repeat: int) -> tuple[float, object]:
    result, best = None, float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t0)
    return 1000 * best, result


def bands(height: int, width: int):
    rows = max(1, BAND // width)
    return [(s, min(height, s + rows)) for s in range(0, height, rows)]


# --------------------------------------------------------------------------- inputs and reference


def make_input(size: tuple[int, int]) -> tuple[np.ndarray, bytes, np.ndarray]:
    """(gray uint8 [H, W], its JPEG at quality 85, the compact model's ab [2, 256, 256])."""
    h, w = size
    rng = np.random.default_rng(0)
    gray = np.asarray(Image.fromarray(data.astronaut()).convert("L").resize((w, h), Image.BICUBIC), np.float32)
    gray = np.clip(gray + rng.normal(0, 4, gray.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", quality=85)
    module, info = load_model("compact")
    with torch.no_grad():
        l_model = info.preprocessing.model_l(gray)
        ab = module.eval()(torch.from_numpy(l_model)[None, None])[0].numpy()
    return gray, buf.getvalue(), ab


def reference(gray: np.ndarray, ab: np.ndarray, mode: str) -> np.ndarray:
    light = skcolor.rgb2lab(np.repeat(gray[..., None], 3, -1))[..., 0]
    ab_full = F.interpolate(torch.from_numpy(ab)[None].double(), size=gray.shape, mode=mode,
                            align_corners=False)[0].permute(1, 2, 0).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's note on the negative Z it clips
        out = skcolor.lab2rgb(np.concatenate([light[..., None], ab_full], -1))
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- ab upsampling variants


def up_torch_banded(ab, size, mode="bilinear"):
    up = torchpath.AbUpsampler(ab, size, mode)
    out = np.empty((2, *size), np.float32)
    for s, e in bands(*size):
        out[:, s:e] = up.rows(s, e).numpy()
    return out


def up_job_today(ab, size):
    """render.compose's float upsampling: across by interpolate once, down by index_select + weights per band."""
    height, width = size
    t = torch.from_numpy(np.array(ab, np.float32))
    ab_x = F.interpolate(t[None], size=(t.shape[-2], width), mode="bilinear", align_corners=False)[0]
    idx, w = (torch.from_numpy(v) for v in render.axis_weights(height, t.shape[-2], "bilinear"))
    out = np.empty((2, *size), np.float32)
    for s, e in bands(*size):
        band = ab_x.index_select(1, idx[s:e, 0]) * w[None, s:e, 0, None]
        out[:, s:e] = band.addcmul_(ab_x.index_select(1, idx[s:e, 1]), w[None, s:e, 1, None]).numpy()
    return out


def up_interpolate(ab, size, mode="bilinear"):
    return F.interpolate(torch.from_numpy(ab)[None], size=size, mode=mode, align_corners=False)[0].numpy()


def up_pillow_whole(ab, size):
    h, w = size
    return np.stack([np.asarray(Image.fromarray(p, "F").resize((w, h), Image.BILINEAR)) for p in ab])


def pillow_banded(planes: list[Image.Image], size, dtype) -> np.ndarray:
    """Model-size Pillow planes (mode F or L) -> [2, H, W]: across once at model height, then each band's rows
    with box= (Pillow skips the unchanged horizontal pass): memory is one band plus the h x W planes."""
    height, width = size
    mh = planes[0].height
    across = [p.resize((width, mh), Image.BILINEAR) for p in planes]
    out = np.empty((2, *size), dtype)
    for s, e in bands(*size):
        box = (0, s * mh / height, width, e * mh / height)
        for c in range(2):
            out[c, s:e] = np.asarray(across[c].resize((width, e - s), Image.BILINEAR, box=box))
    return out


def up_pillow_banded(ab, size):
    return pillow_banded([Image.fromarray(p, "F") for p in ab], size, np.float32)


def up_pillow_l_banded(ab, size, step: float = 1.0):
    """Pillow's 8-bit resampling (fixed point, rounded) of ab stored as bytes round(x / step) + 128."""
    return pillow_banded([Image.fromarray(p, "L") for p in quantise_ab(ab, step)], size, np.uint8)


def packed_ab(ab, step: float = 1.0) -> torch.Tensor:
    """graytable's packing: bytes (0, b index, a index, 0) per model pixel, channels-last."""
    return graytable._packed(quantise_ab(ab, step))


def up_torch_u8_whole(ab, size):
    """torch's uint8 bilinear (its AVX2 kernel), both planes in one 4-byte pixel, whole image."""
    return F.interpolate(packed_ab(ab), size=size, mode="bilinear", align_corners=False)


STRIP = graytable.STRIP_COLUMNS


def u8_strips(ab, size):
    """torch's uint8 bilinear in column strips: across once at model height ([h, W] words: 10 MB for a
    10,000-pixel-wide scan at h = 256), then each strip of columns down with F.interpolate itself (the width
    is unchanged, so it is the identity across). Bit-identical to the whole-image call (its kernel runs
    across first too); a row band would need the vertical pass first, which measured 2-4x slower."""
    height, width = size
    across = F.interpolate(packed_ab(ab), size=(ab.shape[1], width), mode="bilinear", align_corners=False)
    for c0 in range(0, width, STRIP):
        c1 = min(width, c0 + STRIP)
        yield c0, c1, F.interpolate(across[:, :, :, c0:c1], size=(height, c1 - c0), mode="bilinear",
                                    align_corners=False)


def up_torch_u8_banded(ab, size):
    return [strip for _, _, strip in u8_strips(ab, size)]


# --------------------------------------------------------------------------- Lab -> sRGB variants


def conv_numpy_exact(light, ab):
    n = light.size
    return color.lab_to_srgb_uint8(np.stack([light.reshape(-1), ab[0].reshape(-1), ab[1].reshape(-1)], -1)).reshape(
        *light.shape, 3) if n else None


def conv_numpy_planes(light, ab):
    out = np.empty((*light.shape, 3), np.uint8)
    flat_l, flat_a, flat_b, flat_o = light.reshape(-1), ab[0].reshape(-1), ab[1].reshape(-1), out.reshape(-1, 3)
    for s in range(0, flat_l.size, BAND):
        e = s + BAND
        color.lab_planes_to_srgb_uint8(flat_l[s:e], flat_a[s:e], flat_b[s:e], flat_o[s:e])
    return out


def conv_torch(light, ab, encode="pow", kernel=torchpath.lab_to_srgb_codes):
    out = np.empty((*light.shape, 3), np.uint8)
    tl, ta, tb = (torch.from_numpy(x.reshape(-1)) for x in (light, ab[0], ab[1]))
    to = torch.from_numpy(out.reshape(-1, 3))
    for s in range(0, tl.numel(), BAND):
        e = s + BAND
        to[s:e] = kernel(tl[s:e], ta[s:e], tb[s:e], 8, encode)
    return out


def compiled_kernel():
    """torch.compile of the torch kernel: one fused C++ loop per band (inductor), or None without a compiler."""
    try:
        fn = torch.compile(torchpath.lab_to_srgb_codes, dynamic=False, fullgraph=True)
        x = torch.full((BAND,), 50.0)
        fn(x, x * 0, x * 0, 8, "pow")
        return fn
    except Exception as exc:  # noqa: BLE001 - no compiler, or inductor refuses: the row says so
        print(f"  torch.compile unavailable: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
        return None


def build_table(step: float = 1.0) -> np.ndarray:
    """RGBX uint32 words of every (a, b, gray) with a, b = (index - 128) * step: 64 MiB, built once a process."""
    light = torch.from_numpy(color.gray_l_lut())
    q = (torch.arange(256, dtype=torch.float32) - 128) * step
    table = np.empty((256, 256, 256, 4), np.uint8)
    table[..., 3] = 255
    for i in range(256):  # one a at a time: [b, gray]
        a = torch.full((256, 256), float(q[i]))
        b = q[:, None].expand(256, 256).contiguous()
        table[i, ..., :3] = torchpath.lab_to_srgb_codes(light[None, :].expand(256, 256).contiguous(), a, b).numpy()
    return table.view(np.uint32).reshape(-1)


def conv_table(gray, ab_q, table):
    """ab_q: uint8 planes (a, b indices). One gather of an RGBX word per pixel; returns [H, W] uint32 words."""
    out = np.empty(gray.shape, np.uint32)
    flat_g, flat_a, flat_b, flat_o = gray.reshape(-1), ab_q[0].reshape(-1), ab_q[1].reshape(-1), out.reshape(-1)
    idx = np.empty(BAND, np.uint32)
    tmp = np.empty(BAND, np.uint32)
    for s in range(0, flat_g.size, BAND):
        e = min(flat_g.size, s + BAND)
        n = e - s
        np.left_shift(flat_a[s:e], 16, out=idx[:n], dtype=np.uint32)
        np.left_shift(flat_b[s:e], 8, out=tmp[:n], dtype=np.uint32)
        idx[:n] |= tmp[:n]
        idx[:n] |= flat_g[s:e]
        np.take(table, idx[:n], out=flat_o[s:e])
    return out


def quantise_ab(ab, step: float = 1.0) -> np.ndarray:
    return graytable._ab_indices(np.asarray(ab) / np.float32(step), 1.0)


def delta_e(rgb: np.ndarray, ref: np.ndarray) -> str:
    """CIE76 colour difference to the reference (both 8-bit, so its own rounding is in both)."""
    d = np.linalg.norm(color.srgb_to_lab(rgb) - color.srgb_to_lab(ref), axis=-1)
    return f"dE76 mean {d.mean():.3f}, 99.99% {np.quantile(d, 0.9999):.2f}, max {d.max():.2f}"


def rgbx_to_rgb(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words.view(np.uint8).reshape(*words.shape, 4)[..., :3])


def conv_table_torch(gray, ab_q, table_t):
    """As conv_table, with torch's index_select (int32 words as indices)."""
    out = torch.empty(gray.shape, dtype=torch.int32)
    g = torch.from_numpy(gray).to(torch.int32)
    a = torch.from_numpy(ab_q[0]).to(torch.int32)
    b = torch.from_numpy(ab_q[1]).to(torch.int32)
    for s, e in bands(*gray.shape):
        idx = (a[s:e] << 16) | (b[s:e] << 8) | g[s:e]
        torch.index_select(table_t, 0, idx.view(-1), out=out[s:e].view(-1))
    return out.numpy().view(np.uint32)


def compose_table(gray, ab, table_t, score: bool = False, float_ab: bool = False, strips: bool = False):
    """The candidate CPU compose for 8-bit gray: ab upsampled as bytes by torch's uint8 bilinear (strips), the
    gray level written into each word's spare byte, one gather of the RGBX word; optionally the colourfulness
    of each band while it is in cache. ``float_ab``: ab upsampled in float32 (torchpath.AbUpsampler) and
    rounded to the indices instead (error <= 0.5 ab unit against <= 1 from the bytes). ``strips``: the uint8
    upsampling in column strips (bit-identical to the whole-image call) instead of row bands (vertical pass
    once at model width, then each band's rows across: within one of it). Returns the [H, W] RGBX words (and
    the colourfulness)."""
    height, width = gray.shape
    g = torch.from_numpy(gray)
    out = torch.empty((height, width), dtype=torch.int32)
    acc = torchpath.Colourfulness() if score else None
    if float_ab:
        up = torchpath.AbUpsampler(ab, (height, width))
        g32 = g.to(torch.int32)
        for s, e in bands(height, width):
            ab_band = up.rows(s, e).add_(128.5).clamp_(0.0, 255.0).to(torch.int32)
            idx = (ab_band[0] << 16).bitwise_or_(ab_band[1] << 8).bitwise_or_(g32[s:e]).view(-1)
            torch.index_select(table_t, 0, idx, out=out[s:e].view(-1))
            if score:
                acc.add_words(out[s:e])
    elif not strips:
        down = F.interpolate(packed_ab(ab), size=(height, ab.shape[2]), mode="bilinear", align_corners=False)
        for s, e in bands(height, width):
            words4 = F.interpolate(down[:, :, s:e], size=(e - s, width), mode="bilinear", align_corners=False)
            words4[0, 0] = g[s:e]  # byte 0 of each word (channels-last: the pixel's first byte)
            idx = words4.permute(0, 2, 3, 1).view(torch.int32).view(-1)
            torch.index_select(table_t, 0, idx, out=out[s:e].view(-1))
            if score:
                acc.add_words(out[s:e])
    else:
        return graytable.compose_gray8(gray, ab)
    words = out.numpy().view(np.uint32)
    return (words, acc.value()) if score else words


def colourfulness_words(rgb: np.ndarray) -> float:
    """torchpath.Colourfulness.add_words on the RGB image packed as RGBX words (the packing is included)."""
    acc = torchpath.Colourfulness()
    rows = max(1, BAND // rgb.shape[1])
    for s in range(0, rgb.shape[0], rows):
        band = np.zeros((*rgb[s: s + rows].shape[:2], 4), np.uint8)
        band[..., :3] = rgb[s: s + rows]
        acc.add_words(torch.from_numpy(band.view(np.int32)))
    return acc.value()


# --------------------------------------------------------------------------- phase 2: each choice, before/after


def choices(gray: np.ndarray, jpeg: bytes, ab: np.ndarray, rep: int) -> None:
    """The job's path before (phase 1: gray as [H,W,3], the float32 compose, an encode from a contiguous copy,
    the written file decoded again to score) and after, step by step, in one run: ms per MP and the ratio."""
    mp = gray.size / 1e6
    pre = Preprocessing(ab.shape[-2:])
    gray3 = np.repeat(gray[..., None], 3, -1)

    def float_compose():  # phase 1's: the float32 path, gray L by table from channel 0
        render.GRAY_TABLE = False
        try:
            return render.compose(gray3, ab, pre, is_gray=True)
        finally:
            render.GRAY_TABLE = True

    before_rgb, after_rgb = float_compose(), render.compose(gray, ab, pre)
    written = imageio.encode_image(after_rgb)
    steps = [
        ("decode gray JPEG", lambda: imageio.decode_image(jpeg).rgb, lambda: imageio.decode_image(jpeg).pixels),
        ("compose", float_compose, lambda: render.compose(gray, ab, pre)),
        ("encode JPEG q95 4:4:4", lambda: imageio.encode_image(before_rgb),
         lambda: imageio.encode_image(after_rgb)),
        ("score without a reference", lambda: metrics.colorfulness(imageio.decode_image(written).rgb),
         lambda: metrics.colorfulness(after_rgb)),
    ]
    print("| step | before ms/MP | after ms/MP | after / before |\n|---|---|---|---|")
    totals = [0.0, 0.0]
    for name, before, after in steps:
        ms = [best_ms(before, rep)[0] / mp, best_ms(after, rep)[0] / mp]
        totals = [t + m for t, m in zip(totals, ms)]
        print(f"| {name} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[1] / ms[0]:.2f} |", flush=True)
    print(f"| all four | {totals[0]:.1f} | {totals[1]:.1f} | {totals[1] / totals[0]:.2f} |")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1600x1200", help="WxH of the gray test image")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--choices", action="store_true", help="only phase 2's before/after of the job's path")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    size, mp, rep = (h, w), h * w / 1e6, args.repeat
    torch.set_num_threads(1)
    print(cpu_description())
    print(f"gray {w}x{h} ({mp:.2f} MP), ab 256x256 from the compact model; torch threads 1; best of {rep}; "
          f"band {BAND} px\n", flush=True)
    gray, jpeg, ab = make_input(size)
    if args.choices:
        return choices(gray, jpeg, ab, rep)
    ref = reference(gray, ab, "bilinear")
    ref_cubic = reference(gray, ab, "bicubic")
    light = np.take(color.gray_l_lut(), gray)
    ab_full = up_interpolate(ab, size)
    rows: list[tuple[str, str, float, str]] = []

    def add(step, name, ms, note=""):
        rows.append((step, name, ms / mp, note))
        print(f"  {step}: {name}: {ms / mp:.1f} ms/MP {note}", flush=True)

    # ab upsampling
    for name, fn, note_fn in [
        ("torch separable, banded (job today)", lambda: up_job_today(ab, size), None),
        ("torch separable, banded (torchpath.AbUpsampler)", lambda: up_torch_banded(ab, size), None),
        ("torch F.interpolate, whole image", lambda: up_interpolate(ab, size), None),
        ("Pillow mode F, whole image", lambda: up_pillow_whole(ab, size), None),
        ("Pillow mode F, across once + banded rows (box=)", lambda: up_pillow_banded(ab, size), None),
    ]:
        ms, out = best_ms(fn, rep)
        add("ab upsample (bilinear)", name, ms, f"max |diff| vs F.interpolate {np.abs(out - ab_full).max():.4f} ab")
    q_full = quantise_ab(ab_full)
    for name, fn in [("torch uint8 bilinear (AVX2), a and b as bytes of one word, whole image",
                      lambda: up_torch_u8_whole(ab, size)),
                     ("torch uint8 bilinear, across once + strips of 128 columns down: table indices",
                      lambda: up_torch_u8_banded(ab, size))]:
        ms, out = best_ms(fn, rep)
        out = torch.cat(out, dim=3) if isinstance(out, list) else out
        got = out[0, 1:3].flip(0).numpy().astype(np.float32) - 128
        add("ab upsample (bilinear)", name, ms, f"max |diff| {np.abs(got - ab_full).max():.2f} ab; "
            f"{np.mean(out[0, 1:3].flip(0).numpy() != q_full):.1%} of indices differ from rounding F.interpolate")
    ms, q8 = best_ms(lambda: up_pillow_l_banded(ab, size), rep)
    err = np.abs(q8.astype(np.float32) - 128 - ab_full).max()
    add("ab upsample (bilinear)", "Pillow mode L (a+128 bytes), banded: table indices", ms, f"max |diff| {err:.2f} ab")
    cubic_full = up_interpolate(ab, size, "bicubic")
    ms, out = best_ms(lambda: up_torch_banded(ab, size, "bicubic"), rep)
    add("ab upsample (bicubic)", "torch separable, banded", ms, f"max |diff| {np.abs(out - cubic_full).max():.4f} ab")
    ms, _ = best_ms(lambda: up_interpolate(ab, size, "bicubic"), rep)
    add("ab upsample (bicubic)", "torch F.interpolate, whole image", ms, "(Pillow's BICUBIC is a = -0.5: "
        "another definition)")

    # Lab -> sRGB
    def fidelity(rgb, against=ref):
        return f"PSNR {metrics.psnr(rgb, against):.1f} dB vs float64 loop"

    ms, exact = best_ms(lambda: conv_numpy_exact(light, ab_full), rep)
    add("Lab -> sRGB uint8", "numpy exact (color.lab_to_srgb_uint8)", ms, fidelity(exact))
    for name, fn in [
        ("numpy planes + 16-bit encode table (job today)", lambda: conv_numpy_planes(light, ab_full)),
        ("torch kernels, pow (torchpath)", lambda: conv_torch(light, ab_full, "pow")),
        ("torch kernels, encode table (torchpath)", lambda: conv_torch(light, ab_full, "table")),
    ]:
        ms, out = best_ms(fn, rep)
        add("Lab -> sRGB uint8", name, ms, f"{fidelity(out)}; max {np.abs(out.astype(int) - exact).max()} code(s) "
            "vs exact")
    compiled = compiled_kernel() if args.compile else None
    if compiled is not None:
        ms, out = best_ms(lambda: conv_torch(light, ab_full, "pow", compiled), rep)
        add("Lab -> sRGB uint8", "torch.compile'd kernel, pow (inductor C++, 1 thread)", ms, fidelity(out))
    tables = {}
    for step in (1.0, 2.0):
        t0 = time.process_time()
        tables[step] = build_table(step)
        build = 1000 * (time.process_time() - t0)
        q = quantise_ab(ab_full, step)
        ms, words = best_ms(lambda: conv_table(gray, q, tables[step]), rep)
        add("Lab -> sRGB uint8", f"[a][b][gray] RGBX table, ab step {step:g}, numpy take", ms,
            f"{fidelity(rgbx_to_rgb(words))}; max {np.abs(rgbx_to_rgb(words).astype(int) - exact).max()} codes vs "
            f"exact; table 64 MiB, built once in {build:.0f} ms")
        table_t = torch.from_numpy(tables[step].view(np.int32))
        ms, words = best_ms(lambda: conv_table_torch(gray, q, table_t), rep)
        add("Lab -> sRGB uint8", f"[a][b][gray] RGBX table, ab step {step:g}, torch index_select", ms,
            fidelity(rgbx_to_rgb(words)))

    # whole compose
    gray3 = np.repeat(gray[..., None], 3, -1)
    pre = Preprocessing(ab.shape[-2:])
    ms_today, today = best_ms(lambda: render.compose(gray3, ab, pre), rep)
    add("whole compose", "render's float32 path (phase 1's job: gray as [H,W,3])", ms_today,
        f"{fidelity(today)}; {delta_e(today, ref)}")
    ms, out = best_ms(lambda: render.compose(gray, ab, pre), rep)
    add("whole compose", "render.compose today (gray [H,W]: graytable)", ms, f"{fidelity(out)}; {delta_e(out, ref)}")
    for name, fn in [
        ("torchpath.compose, pow, gray [H,W]", lambda: torchpath.compose(gray, ab)),
        ("torchpath.compose, encode table, gray [H,W]", lambda: torchpath.compose(gray, ab, encode="table")),
    ]:
        ms, out = best_ms(fn, rep)
        add("whole compose", name, ms, fidelity(out))
    ms, words = best_ms(lambda: conv_table(gray, up_pillow_l_banded(ab, size), tables[1.0]), rep)
    add("whole compose", "Pillow L ab bytes + [a][b][gray] table -> RGBX (no float per pixel)", ms,
        fidelity(rgbx_to_rgb(words)))
    table_t = torch.from_numpy(tables[1.0].view(np.int32))
    graytable.table().ensure(0, 255)
    for layout, strips in (("row bands", False), ("column strips: graytable.compose_gray8", True)):
        ms, words = best_ms(lambda: compose_table(gray, ab, table_t, strips=strips), rep)
        add("whole compose", f"torch uint8 ab words ({layout}) + gray byte + [a][b][gray] gather -> RGBX", ms,
            f"{fidelity(rgbx_to_rgb(words))}; {delta_e(rgbx_to_rgb(words), ref)}")
    ms, words = best_ms(lambda: compose_table(gray, ab, table_t, float_ab=True), rep)
    add("whole compose", "torch float32 ab rounded to indices + [a][b][gray] gather -> RGBX (banded)", ms,
        f"{fidelity(rgbx_to_rgb(words))}; {delta_e(rgbx_to_rgb(words), ref)}")
    ms, (words, cf) = best_ms(lambda: compose_table(gray, ab, table_t, score=True), rep)
    add("whole compose", "torch uint8 ab ... gather, + colourfulness of each band in cache (add_words)", ms,
        f"colourfulness {cf:.4f} vs metrics.colorfulness {metrics.colorfulness(rgbx_to_rgb(words)):.4f}")
    ms, words = best_ms(lambda: conv_table(gray, quantise_ab(up_pillow_banded(ab, size)), tables[1.0]), rep)
    add("whole compose", "Pillow F ab + rounding + [a][b][gray] table -> RGBX", ms, fidelity(rgbx_to_rgb(words)))
    ms, out = best_ms(lambda: torchpath.compose(gray, ab, mode="bicubic"), rep)
    add("whole compose", "torchpath.compose, bicubic ab, pow", ms, fidelity(out, ref_cubic))

    # around the compose
    ms, _ = best_ms(lambda: np.asarray(Image.open(io.BytesIO(jpeg))), rep)
    add("decode (gray JPEG q85)", "Pillow, one channel [H,W]", ms)
    ms, _ = best_ms(lambda: imageio.decode_image(jpeg), rep)
    add("decode (gray JPEG q85)", "imageio.decode_image (job today: [H,W,3] and the gray check)", ms)
    rgb = torchpath.compose(gray, ab)
    ms, written = best_ms(lambda: imageio.encode_image(rgb, "jpeg", quality=95), rep)
    add("encode (JPEG q95 4:4:4)", "imageio.encode_image from [H,W,3]", ms, f"{len(written) / 1e6:.2f} MB")
    words = conv_table(gray, up_pillow_l_banded(ab, size), tables[1.0])

    def encode_rgbx():
        im = Image.frombuffer("RGBX", (w, h), words, "raw", "RGBX", 0, 1)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95, subsampling=0)
        return buf.getvalue()

    ms, _ = best_ms(encode_rgbx, rep)
    add("encode (JPEG q95 4:4:4)", "Pillow from the RGBX words (Image.frombuffer, no interleave copy)", ms)
    ms, _ = best_ms(lambda: imageio.decode_image(written), rep)
    add("score", "read-back decode of the written file (job today)", ms)
    ms, _ = best_ms(lambda: metrics.colorfulness(rgb), rep)
    add("score", "colourfulness, metrics.colorfulness (job today)", ms)
    ms, _ = best_ms(lambda: torchpath.colourfulness(rgb), rep)
    add("score", "colourfulness, torchpath (exact int64 sums)", ms)
    ms, _ = best_ms(lambda: colourfulness_words(rgb), rep)
    add("score", "colourfulness, torchpath add_words on RGBX words (exact; includes the packing copy)", ms)
    colour_ref = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC))
    ms, s1 = best_ms(lambda: metrics.ssim(rgb, colour_ref), max(1, rep // 2))
    add("score (with a reference)", "SSIM, skimage (metrics.ssim)", ms)
    ms, s2 = best_ms(lambda: torchpath.ssim(rgb, colour_ref), max(1, rep // 2))
    add("score (with a reference)", "SSIM, torchpath (int64 window sums, float64 moments)", ms,
        f"|diff| {abs(s1 - s2):.1e}")
    ms, _ = best_ms(lambda: metrics.psnr(rgb, colour_ref), rep)
    add("score (with a reference)", "PSNR, metrics.psnr", ms)
    back = imageio.decode_image(written).rgb
    add("score", "the encoded pixels vs the written file (what the read-back changes)", 0.0,
        f"colourfulness {metrics.colorfulness(rgb):.3f} vs {metrics.colorfulness(back):.3f}; PSNR vs reference "
        f"{metrics.psnr(rgb, colour_ref):.3f} vs {metrics.psnr(back, colour_ref):.3f} dB; SSIM "
        f"{metrics.ssim(rgb, colour_ref):.4f} vs {metrics.ssim(back, colour_ref):.4f}")

    print()
    print("| step | variant | ms per MP (1 core) | x vs job today | notes |")
    print("|---|---|---|---|---|")
    today_of = {"ab upsample (bilinear)": rows[0][2], "Lab -> sRGB uint8": next(
        r[2] for r in rows if r[1].startswith("numpy planes")), "whole compose": ms_today / mp}
    for step, name, v, note in rows:
        base = today_of.get(step)
        ratio = f"{v / base:.2f}" if base else ""
        print(f"| {step} | {name} | {v:.1f} | {ratio} | {note} |")


if __name__ == "__main__":
    main()
