"""Regenerate docs/serve.png: start ``lenet serve``, draw a digit in headless Chromium, screenshot.

Usage: python scripts/serve_screenshot.py [OUT.png]   (needs /usr/bin/chromium and Playwright)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from lenet.bench.serve_load import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# A "4" drawn in two strokes (fractions of the canvas side).
FOUR = [[(0.32, 0.15), (0.24, 0.58), (0.74, 0.58)], [(0.62, 0.22), (0.6, 0.88)]]


def main(out: Path) -> None:
    with ServerProcess() as srv, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="lenet-chromium-"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=ARGS,
            viewport={"width": 860, "height": 640},
            reduced_motion="reduce",
        )
        page = ctx.new_page()
        page.goto(srv.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('lenet')")
        box = page.locator("#pad").bounding_box()
        for stroke in FOUR:
            pts = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
            page.mouse.move(*pts[0])
            page.mouse.down()
            for p in pts[1:]:
                page.mouse.move(*p, steps=15)
            page.mouse.up()
        page.wait_for_selector("#result[data-state='done']")
        page.screenshot(path=str(out))
        ctx.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "serve.png")
