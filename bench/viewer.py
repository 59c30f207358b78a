"""Scrolling a series in the browser: from an arrow key on the section slider to the new section on screen.

    .venv/bin/python bench/viewer.py [--sections 176] [--size 256] [--steps 30] [--model CARD]

Starts the app on loopback (fresh data directory), signs a radiologist in, uploads a generated series (a zip of
SECTIONS DICOM files of SIZE x SIZE; no real scan) on the Study page, waits for the study verdict, then focuses the
section slider and presses the right arrow STEPS times, timing each press until the image's title names the new
section; first with the heat map off (the default), then on (each new section's Grad-CAM is computed). Then the
same in the quick scroller (the series paged in the browser), from the key to its title naming the new section.
"Open in the viewer" must bring the detailed view to the section shown. Prints p50/p95 per mode (target <= 150
ms), the upload-to-verdict time and the time to open the quick scroller's section in the detailed view.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import ARGS, CHROMIUM, PASSWORD, start_app  # noqa: E402
from core.evaluation.metrics import machine  # noqa: E402
from core.imaging.phantom_series import dicom_series, head_volume, zipped  # noqa: E402


def press_times(page, steps: int, start: int, count: int) -> list[float]:
    slider = (
        page.get_by_test_id("stSlider").get_by_role("slider").first
    )  # the detailed view's, not the quick scroller's
    slider.focus()
    samples = []
    for k in range(steps):
        target = start + k + 2  # sections are numbered from 1 in the title
        started = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "t => [...document.querySelectorAll('.gtitle')].some(e => e.textContent.startsWith(t))",
            arg=f"Section {target} of {count}",
            timeout=30_000,
        )
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def cine_times(page, steps: int, count: int) -> list[float]:
    scroller = page.locator(".btd-cine").first
    scroller.click(position={"x": 5, "y": 5})  # focus the scroller (not its slider)
    start = int(scroller.get_attribute("data-section") or "1")
    samples = []
    for k in range(steps):
        target = f"Section {min(start + k + 1, count)} of {count}"
        started = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "t => (document.querySelector('.btd-cine-title')?.textContent || '').startsWith(t)",
            arg=target,
            timeout=30_000,
            polling="raf",
        )
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict:
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(samples), 1),
        "p95_ms": round(float(np.percentile(samples, 95)), 1),
        "max_ms": round(max(samples), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, default=176)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run this bench.")
    from playwright.sync_api import sync_playwright

    study = zipped(dicom_series(head_volume(args.sections, args.size, range(70, 100)), spacing=1.0))
    report: dict = {"machine": machine(), "series": f"{args.sections} sections of {args.size} x {args.size}"}
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_app(args.model, data_dir, 1)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(url)
                page.get_by_role("textbox", name="Account").fill("reader0")
                page.get_by_role("textbox", name="Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.get_by_text("Scan triage").wait_for(timeout=120_000)
                page.get_by_test_id("stSidebarNav").get_by_text("Study", exact=True).click()  # same session
                page.get_by_role("heading", name="Study").wait_for(timeout=60_000)
                started = time.perf_counter()
                page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
                    {"name": "study.zip", "mimeType": "application/zip", "buffer": study}
                )
                page.get_by_role("button", name="Analyse this study").click()
                page.get_by_test_id("stMetricLabel").filter(has_text="Study verdict").wait_for(timeout=300_000)
                page.locator(".gtitle").first.wait_for(timeout=60_000)
                report["upload_to_verdict_s"] = round(time.perf_counter() - started, 2)
                title = page.locator(".gtitle").first.text_content() or ""
                current = int(title.split()[1]) - 1
                page.screenshot(path=str(ROOT / "artifacts" / "study-page.png"), full_page=True)
                report["heat_map_off"] = summary(press_times(page, args.steps, current, args.sections))
                page.get_by_text("Heat map").first.click()  # on: each new section's Grad-CAM is computed
                page.wait_for_timeout(3000)
                current += args.steps
                report["heat_map_on"] = summary(press_times(page, args.steps, current, args.sections))
                report["quick_scroll"] = summary(cine_times(page, args.steps, args.sections))
                page.locator(".btd-cine").first.screenshot(path=str(ROOT / "artifacts" / "quick-scroll.png"))
                shown = page.locator(".btd-cine").first.get_attribute("data-section")
                started = time.perf_counter()
                page.get_by_role("button", name="Open in the viewer").first.click()
                page.wait_for_function(
                    "t => [...document.querySelectorAll('.gtitle')].some(e => e.textContent.startsWith(t))",
                    arg=f"Section {shown} of {args.sections}",
                    timeout=30_000,
                )
                report["open_in_viewer_ms"] = round((time.perf_counter() - started) * 1000, 1)
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
