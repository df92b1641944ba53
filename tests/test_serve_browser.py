"""End to end in a real browser: headless Debian Chromium drives the page of a real ``lenet serve``.

Needs ``/usr/bin/chromium`` (Debian packages ``chromium`` + ``chromium-driver``, which
``scripts/test.sh`` installs) and Playwright for Python, which only drives that binary: no browser
is ever downloaded. Without them the tests skip on a developer machine and FAIL in CI (CI=true).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lenet.bench.serve_load import ServerProcess
from lenet.data import load_split

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Headless, no sandbox (root in CI containers), no GPU, and nothing phoning home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
]


def _require_browser() -> None:
    """Skip locally, fail in CI, when the browser or its driver library is missing."""
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} not found (apt-get install chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("Playwright for Python not installed (pip install -e '.[test]')")
    if problems:
        msg = "browser test cannot run: " + "; ".join(problems)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def server():
    """``lenet serve`` with the bundled weights, as a user starts it."""
    _require_browser()
    with ServerProcess() as srv:
        yield srv


@pytest.fixture(scope="module")
def playwright():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def open_browser(playwright, **context_options):
    """A fresh Chromium profile (temporary user-data dir) -> persistent context."""
    profile = tempfile.mkdtemp(prefix="lenet-chromium-")
    # Reduced motion: the bars jump to their length, so what is measured is what is final.
    return playwright.chromium.launch_persistent_context(
        profile,
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        reduced_motion="reduce",
        **context_options,
    )


@pytest.fixture
def desktop(playwright, server):
    ctx = open_browser(playwright, viewport={"width": 900, "height": 720})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Chromium logs every non-2xx fetch as a console error; the 400 tests cause those on purpose,
    # and any 404 (a missing asset) is caught through "response" below.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status == 404 else None,
    )
    page.goto(server.url + "/")
    yield page
    ctx.close()
    assert not errors, errors  # no JavaScript errors during the test


# Strokes in fractions of the canvas side; each inner list is one pen-down..pen-up stroke.
ONE = [[(0.52, 0.15), (0.50, 0.85)]]
SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]


def draw(page, strokes, steps: int = 12) -> None:
    """Draw with real mouse events (down, moves, up) onto the canvas."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        pts = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
        page.mouse.move(*pts[0])
        page.mouse.down()
        for x, y in pts[1:]:
            page.mouse.move(x, y, steps=steps)
        page.mouse.up()


def settled(page) -> dict:
    """Wait until the answer to the latest drawing is shown; return what the page shows."""
    page.wait_for_selector("#result:not([data-state='pending'])", timeout=20_000)
    return page.evaluate(
        """() => ({
          state: document.getElementById('result').dataset.state,
          digit: document.getElementById('digit').textContent.trim(),
          confidence: document.getElementById('confidence').textContent.trim(),
          status: document.getElementById('status').textContent.trim(),
          top: [...document.querySelectorAll('#bars li.top')].map(li => li.dataset.digit),
          bars: document.querySelectorAll('#bars li').length,
          // rendered bar lengths, in % of their track (what a person sees)
          widths: [...document.querySelectorAll('#bars li')].map(li =>
            100 * li.querySelector('.fill').getBoundingClientRect().width /
            li.querySelector('.track').getBoundingClientRect().width),
          seen: document.getElementById('preprocessed').getAttribute('src') || '',
          seenSize: [document.getElementById('preprocessed').naturalWidth,
                     document.getElementById('preprocessed').naturalHeight],
        })"""
    )


def assert_shows(shown: dict, digit: str) -> None:
    assert shown["state"] == "done", shown
    assert shown["digit"] == digit, shown
    assert shown["top"] == [digit] and shown["bars"] == 10, shown
    assert max(shown["widths"]) == shown["widths"][int(digit)] > 50, shown  # the big bar
    assert "% sure" in shown["confidence"] and "ms on the server" in shown["status"], shown
    assert shown["seen"].startswith("data:image/png;base64,"), shown
    assert shown["seenSize"] == [28, 28], shown


def test_draw_one_and_seven(desktop, tmp_path):
    page = desktop
    assert page.title().startswith("lenet")
    shown = settled(page)
    assert shown["state"] == "idle" and shown["digit"] == "–"
    page.wait_for_function("document.getElementById('model').textContent.includes('lenet5')")

    draw(page, ONE)
    shown = settled(page)
    assert_shows(shown, "1")
    page.screenshot(path=str(tmp_path / "one.png"))

    page.click("#clear")
    assert settled(page)["digit"] == "–"
    draw(page, SEVEN)
    shown = settled(page)
    assert_shows(shown, "7")
    page.screenshot(path=str(tmp_path / "seven.png"), full_page=True)
    assert (tmp_path / "seven.png").stat().st_size > 10_000


def test_prediction_updates_while_drawing(desktop, server):
    """Requests go out during the stroke, not only after the pen is lifted."""
    page = desktop
    box = page.locator("#pad").bounding_box()
    calls = []
    page.on("request", lambda r: calls.append(r.url) if r.url.endswith("/api/predict") else None)
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + 0.15 * box["height"])
    page.mouse.down()
    for i in range(1, 31):
        page.mouse.move(x, box["y"] + (0.15 + 0.7 * i / 30) * box["height"])
        page.wait_for_timeout(15)
    during = len(calls)
    page.mouse.up()
    assert during >= 2, f"only {during} predictions while drawing"
    assert_shows(settled(page), "1")


def test_upload_photo(desktop, mnist_dir, tmp_path):
    """The upload button sends a photo (dark ink on light paper, JPEG) and shows the answer."""
    split = load_split("test", mnist_dir)
    i = 1  # a "2" in the MNIST test set
    label = str(int(split.labels[i]))
    ink = np.asarray(
        Image.fromarray(np.asarray(split.images[i])).resize((180, 180), Image.BILINEAR), float
    )
    paper = np.full((320, 240), 215.0)
    paper[60:240, 40:220] *= 1 - 0.8 * ink / 255
    photo = tmp_path / "photo.jpg"
    Image.fromarray(paper.clip(0, 255).astype(np.uint8)).convert("RGB").save(photo, quality=85)

    page = desktop
    page.set_input_files("#upload", str(photo))
    page.wait_for_function("document.getElementById('result').dataset.state !== 'idle'")
    assert_shows(settled(page), label)
    page.screenshot(path=str(tmp_path / "upload.png"))


def test_upload_not_an_image_shows_error(desktop, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    page = desktop
    page.set_input_files("#upload", str(bad))
    page.wait_for_function("document.getElementById('result').dataset.state !== 'idle'")
    shown = settled(page)
    assert shown["state"] == "error" and shown["status"].startswith("Error:"), shown


def test_phone_layout_and_touch(playwright, server, tmp_path):
    """On a phone-sized screen the page fits the width, and a finger draws (touch events)."""
    ctx = open_browser(
        playwright,
        viewport={"width": 390, "height": 844},
        has_touch=True,
        is_mobile=True,
        device_scale_factor=2,
    )
    try:
        page = ctx.new_page()
        page.goto(server.url + "/")
        fits = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert fits, "horizontal scrolling on a phone"
        box = page.locator("#pad").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["width"] >= 340

        # A "1" with a finger: real touch events through the DevTools protocol.
        cdp = ctx.new_cdp_session(page)
        x = box["x"] + box["width"] / 2
        ys = [box["y"] + (0.15 + 0.7 * k / 20) * box["height"] for k in range(21)]
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": "touchStart", "touchPoints": [{"x": x, "y": ys[0]}]},
        )
        for y in ys[1:]:
            cdp.send(
                "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]}
            )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        assert_shows(settled(page), "1")
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        ctx.close()


def test_blank_upload_says_no_digit(desktop, tmp_path):
    blank = tmp_path / "blank.png"
    buf = io.BytesIO()
    Image.new("L", (200, 200), 255).save(buf, format="PNG")
    blank.write_bytes(buf.getvalue())
    page = desktop
    page.set_input_files("#upload", str(blank))
    page.wait_for_function("document.getElementById('result').dataset.state !== 'idle'")
    shown = settled(page)
    assert shown["state"] == "blank" and shown["digit"] == "?", shown
    assert "no digit found" in shown["confidence"], shown


# "2026" in canvas fractions of the wide number pad (3:1): 2, 0, 2, 6, one stroke each.
def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 25) -> list:
    return [
        (cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in np.linspace(-np.pi / 2, 1.5 * np.pi, n)
    ]


_TWO = [(0.2, 0.3), (0.35, 0.17), (0.6, 0.17), (0.75, 0.32), (0.7, 0.5), (0.4, 0.7), (0.2, 0.85)]
_TWO = [*_TWO, (0.8, 0.85)]
_SIX = [(0.7, 0.15), (0.45, 0.3), (0.28, 0.55), (0.3, 0.78), (0.5, 0.87), (0.7, 0.78)]
_SIX = [*_SIX, (0.72, 0.6), (0.55, 0.5), (0.35, 0.58), (0.28, 0.7)]


def _cell(k: int, pts: list) -> list:
    return [(0.04 + 0.23 * k + 0.23 * x, y) for x, y in pts]


NUMBER_2026 = [
    _cell(0, _TWO),
    _cell(1, _ellipse(0.5, 0.5, 0.3, 0.34)),
    _cell(2, _TWO),
    _cell(3, _SIX),
]


def test_number_mode_writes_2026_and_reads_it_back(desktop, tmp_path):
    """The number mode: a wide pad, /api/read, the string, a chip and a box per character."""
    page = desktop
    page.click("#mode-number")
    assert page.evaluate("document.body.dataset.mode") == "number"
    assert page.evaluate("[pad.width, pad.height]") == [840, 280]
    calls = []
    page.on("request", lambda r: calls.append(r.url) if "/api/" in r.url else None)
    draw(page, NUMBER_2026, steps=4)
    shown = settled(page)
    assert shown["state"] == "done" and shown["digit"] == "2026", shown
    assert "% sure" in shown["confidence"], shown
    assert calls and all(u.endswith("/api/read") for u in calls if "/api/model" not in u)
    chips = page.evaluate("[...document.querySelectorAll('#chars li b')].map(b => b.textContent)")
    assert chips == ["2", "0", "2", "6"], chips
    # Boxes are drawn on the overlay: blue pixels around each character, none elsewhere.
    blue = page.evaluate(
        """() => { const o = document.getElementById('overlay');
          const d = o.getContext('2d').getImageData(0, 0, o.width, o.height).data;
          let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )
    assert blue > 1000, blue
    page.screenshot(path=str(tmp_path / "number.png"), full_page=True)
    # Back to one digit: the square pad and /api/predict again.
    page.click("#mode-digit")
    assert page.evaluate("[pad.width, pad.height]") == [280, 280]
    draw(page, ONE)
    assert_shows(settled(page), "1")
