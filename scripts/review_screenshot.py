"""Screenshots of the review page for the README: a real run on the bundled samples, the page served by
``colorize review`` and driven in headless Chromium by the browser test's driver (tests/cdp.py).

    python scripts/review_screenshot.py [--model effnet_unet] [--run OUT] [--out docs/review.jpg]

Without ``--run`` the colorize job first runs on the bundled samples into a temporary folder. Writes the
detail view (two colour points placed, their colours picked, the preview shown) to ``--out`` and the grid to
the same name with ``-grid``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


async def shoot(url: str, out: Path, image_id: str, points: list[tuple[float, float, float, float]]) -> None:
    from tests.cdp import Chromium

    fmt = "jpeg" if out.suffix.lower() in (".jpg", ".jpeg") else "png"
    with tempfile.TemporaryDirectory() as profile:
        async with Chromium(Path(profile), width=1400, height=820) as page:
            await page.goto(url + "/")
            await page.wait_for("document.body.dataset.ready === '1'")
            await page.wait_for("[...document.querySelectorAll('.card.ok img')].every(i => i.complete && "
                                "i.naturalWidth > 0)")
            grid = out.with_name(out.stem + "-grid" + out.suffix)
            grid.write_bytes(await page.screenshot(fmt=fmt))
            card = await page.rect(f".card[data-id='{image_id}']")
            await page.click(card["x"] + card["width"] / 2, card["y"] + card["height"] / 2)
            await page.wait_for(f"document.body.dataset.detailReady === '{image_id}'")
            for i, (x, y, fa, fb) in enumerate(points, 1):
                img = await page.rect("#input-img")
                await page.click(img["x"] + img["width"] * x, img["y"] + img["height"] * y)
                await page.wait_for(f"document.body.dataset.points === '{i}' && "
                                    "document.querySelector('#picker-l').textContent !== '…'")
                await asyncio.sleep(0.5)
                picker = await page.rect("#picker")
                await page.click(picker["x"] + picker["width"] * fa, picker["y"] + picker["height"] * fb)
            await page.wait_for("document.body.dataset.busy === '0' && document.querySelector('#output-caption')"
                                ".textContent.startsWith('preview')", timeout=120)
            await asyncio.sleep(0.5)
            out.write_bytes(await page.screenshot(fmt=fmt))
            assert not page.errors, page.errors
    print(out, grid)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="effnet_unet")
    p.add_argument("--run", help="an existing run's --output (default: run the job on the bundled samples)")
    p.add_argument("--out", default=str(REPO / "docs" / "review.jpg"))
    p.add_argument("--image", default="chelsea", help="the image opened in the detail view")
    args = p.parse_args()
    from tests.reviewkit import start_review, stop

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or str(Path(tmp) / "run")
        if not args.run:
            subprocess.run([sys.executable, "-m", "jobs.colorize", "--output", run, "--model", args.model],
                           cwd=REPO, check=True)
        proc, url = start_review(run)
        try:
            # Points on the cat's nose and its left eye; picker positions as fractions of the ab plane.
            asyncio.run(shoot(url, Path(args.out), args.image, [(0.6, 0.78, 0.75, 0.45), (0.42, 0.38, 0.55, 0.4)]))
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
