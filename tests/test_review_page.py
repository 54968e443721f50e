"""The review page in a real browser (headless Chromium over the DevTools protocol), served by the
``colorize review`` command itself: the grid shows the run, a click places a point, the preview changes, the
picker recolours it, a drag moves it, save writes the manifest."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from colorize_core import storage
from tests import jobkit, reviewkit
from tests.cdp import Chromium

def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


async def center(page: Chromium, selector: str, fx: float = 0.5, fy: float = 0.5) -> tuple[float, float]:
    r = await page.rect(selector)
    return r["x"] + r["width"] * fx, r["y"] + r["height"] * fy


async def output_shot(page: Chromium) -> np.ndarray:
    await page.wait_for("(() => { const i = document.querySelector('#output-img'); "
                        "return i.complete && i.naturalWidth > 0; })()")
    return pixels(await page.screenshot(await page.rect("#output-img")))


async def previews(page: Chromium) -> int:
    return int(await page.evaluate("document.body.dataset.previews"))


async def drive(page: Chromium, url: str, rows: list[dict]) -> dict:
    """The reviewer's session; returns what the test checks afterwards."""
    await page.goto(url + "/")
    await page.wait_for("document.body.dataset.ready === '1'")
    await page.wait_for(f"document.querySelectorAll('.card').length === {len(rows)}")
    ids = await page.evaluate("[...document.querySelectorAll('.card')].map(c => c.dataset.id)")
    assert sorted(ids) == sorted(r["image_id"] for r in rows)
    error_text = await page.evaluate("document.querySelector('.card.error .reason').textContent")
    assert error_text.startswith("error: "), error_text
    await page.wait_for("[...document.querySelectorAll('.card.ok img')].every(i => i.complete && i.naturalWidth > 0)"
                        " && document.querySelectorAll('.card.ok img').length === 4")

    # Sorting by PSNR, descending, reorders the grid (through the API).
    await page.evaluate("(() => { const s = document.querySelector('select[name=sort]'); s.value = 'psnr'; "
                        "s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    await page.evaluate("(() => { const s = document.querySelector('select[name=order]'); s.value = 'desc'; "
                        "s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    await page.wait_for("(document.body.dataset.grid || '').includes('sort=psnr&order=desc')")
    by_psnr = await page.evaluate("[...document.querySelectorAll('.card')].map(c => c.dataset.id)")

    # Open one image with a real click on its card.
    target = "box 1/p001"
    await page.click(*await center(page, f".card[data-id={json.dumps(target)}]"))
    await page.wait_for(f"document.body.dataset.detailReady === {json.dumps(target)}")
    before = await output_shot(page)

    # A click on the input places a point and asks for a preview.
    await page.click(*await center(page, "#input-img", 0.5, 0.5))
    await page.wait_for("document.body.dataset.points === '1'")
    await page.wait_for("Number(document.body.dataset.previews) >= 1")
    await page.wait_for("document.querySelector('#picker-l').textContent !== '…'")
    first = await output_shot(page)

    # The picker: the opaque pixel of the ab plane farthest from the point's current colour.
    lightness = float(await page.evaluate("document.querySelector('#picker-l').textContent"))
    with urllib.request.urlopen(f"{url}/api/gamut?l={round(lightness)}") as res:
        plane = np.asarray(Image.open(io.BytesIO(res.read())))
    current = await page.evaluate("(() => { const t = document.querySelector('#point-list li span:nth-child(2)')"
                                  ".textContent; return t; })()")
    a0, b0 = (float(v) for v in current.split("a ")[1].split(" b "))
    js, is_ = np.nonzero(plane[..., 3] == 255)
    a_px, b_px = -110 + 220 * (is_ + 0.5) / 256, 110 - 220 * (js + 0.5) / 256
    far = int(np.argmax((a_px - a0) ** 2 + (b_px - b0) ** 2))
    box = await page.rect("#picker")
    n = await previews(page)
    await page.click(box["x"] + (is_[far] + 0.5) * box["width"] / 256, box["y"] + (js[far] + 0.5) * box["height"] / 256)
    await page.wait_for(f"Number(document.body.dataset.previews) > {n} && "
                        "!document.querySelector('#output-caption').textContent.startsWith('output')")
    await asyncio.sleep(0.3)
    await page.wait_for(f"Number(document.body.dataset.previews) > {n}")
    picked = await output_shot(page)

    # Drag the point to the upper left.
    n = await previews(page)
    start = await center(page, "#points .point")
    end = await center(page, "#input-img", 0.2, 0.25)
    await page.drag(start, end)
    await page.wait_for(f"Number(document.body.dataset.previews) > {n}")
    moved = await page.evaluate("document.querySelector('#point-list li span:nth-child(2)').textContent")

    # Save, then remove the point with a right click (not saved).
    await page.click(*await center(page, "#save"))
    await page.wait_for("document.body.dataset.saves === '1'")
    saved_status = await page.evaluate("document.querySelector('#status').textContent")
    await page.click(*await center(page, "#points .point"), button="right")
    await page.wait_for("document.body.dataset.points === '0'")
    return {"by_psnr": by_psnr, "before": before, "first": first, "picked": picked, "far": (a_px[far], b_px[far]),
            "moved": moved, "saved_status": saved_status}


@pytest.mark.slow
def test_review_page_in_chromium(ray_cluster, chromium, tmp_path):
    options = storage.StorageOptions.from_env()
    output, rows = reviewkit.make_run(str(tmp_path), options, reviewkit.guided_model(str(tmp_path)))
    proc, url = reviewkit.start_review(output)
    try:
        async def session():
            async with Chromium(tmp_path / "profile", executable=chromium) as page:
                got = await drive(page, url, rows)
                assert not page.errors, page.errors
                return got

        got = asyncio.run(asyncio.wait_for(session(), 300))
    finally:
        reviewkit.stop(proc)
    psnr_order = sorted((r for r in jobkit.read_metrics(output, options).to_pylist() if r["psnr"] is not None),
                        key=lambda r: -r["psnr"])
    assert got["by_psnr"][: len(psnr_order)] == [r["image_id"] for r in psnr_order]
    assert got["first"].shape == got["before"].shape
    assert np.abs(got["first"] - got["before"]).mean() > 0.5, "placing a point changed the preview"
    assert np.abs(got["picked"] - got["first"]).mean() > 0.5, "picking a colour changed the preview"
    x, y = (float(v) for v in got["moved"].split(" · ")[0].replace("x ", "").split(" y "))
    assert abs(x - 0.2) < 0.05 and abs(y - 0.25) < 0.05, got["moved"]
    assert "hints.parquet" in got["saved_status"]
    table = storage.read_parquet_table(storage.join(output, "review", "hints.parquet"), options).to_pylist()
    assert [r["image_id"] for r in table] == ["box 1/p001"]
    (hint,) = table[0]["hints"]
    assert abs(hint["x"] - 0.2) < 0.05 and abs(hint["y"] - 0.25) < 0.05
    assert abs(hint["a"] - got["far"][0]) < 1e-6 and abs(hint["b"] - got["far"][1]) < 1e-6
    assert table[0]["uri"] == rows[0]["uri"]

