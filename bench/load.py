"""Browser sessions at once against a real `streamlit run` on loopback: upload to verdict, and the health endpoint.

    .venv/bin/python bench/load.py [--users 1 4 8] [--scans 5] [--model CARD]

Starts the app (fresh data directory, the shipped model unless --model), then for each level of concurrency opens
that many browser sessions in Debian chromium (Playwright, headless). Every user types a patient reference and
presses Enter, then at once drops the first scan (the race that lost files before), then the others one by one;
each scan's time from drop to its verdict on screen is one sample. Meanwhile a thread polls /_stcore/health every
200 ms. Prints p50/p95 of both per level, files that never got a verdict, and the ratio of p95 at the highest
level to p95 alone (target <= 3). Loopback only; bounded by --scans.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.evaluation.metrics import machine  # noqa: E402
from core.imaging.phantoms import png_bytes, synthetic_slice  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PASSWORD = "load test password"


def start_app(card: str | None, data_dir: str, users: int) -> tuple[subprocess.Popen, str]:
    from core.services import accounts
    from core.services.access import COMMAND_LINE
    from core.storage.sqlite import SQLiteStore

    store = SQLiteStore(Path(data_dir) / "results.sqlite3")
    for u in range(users):
        accounts.add_account(store, COMMAND_LINE, f"reader{u}", "radiologist", PASSWORD)
    port = free_port()
    # the bench's writes go to its own temporary database, never to a configured MongoDB or PACS
    kept = {k: v for k, v in os.environ.items() if k != "MONGODB_URI" and not k.startswith("BTD_PACS")}
    env = {**kept, "BTD_DATA_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if card:
        env["BTD_MODEL"] = card
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "streamlit_app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise SystemExit("streamlit did not start")


class HealthProbe(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.samples, self.running = url, [], True

    def run(self) -> None:
        while self.running:
            started = time.perf_counter()
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=30).read()
            self.samples.append((time.perf_counter() - started) * 1000)
            time.sleep(0.2)


async def user(
    browser, url: str, scans: list[bytes], index: int, timeout_s: float, shots: Path | None = None
) -> tuple[list[float], int]:
    from playwright.async_api import FilePayload

    context = await browser.new_context(viewport={"width": 1300, "height": 1000})
    page = await context.new_page()
    await page.goto(url)
    await page.get_by_role("textbox", name="Account").fill(f"reader{index}")
    await page.get_by_role("textbox", name="Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("Scan triage").wait_for(timeout=120_000)
    await page.get_by_test_id("stSidebar").get_by_text("version").wait_for(timeout=120_000)
    field = page.get_by_role("textbox", name="Patient reference (optional)")
    dropzone = page.get_by_test_id("stFileUploaderDropzoneInput")
    verdicts = page.get_by_test_id("stMetricLabel").filter(has_text="Verdict")
    samples, lost = [], 0
    for k, scan in enumerate(scans):
        if k == 0:
            await field.fill(f"load-test-{index}")
            await field.press("Enter")  # a rerun starts; the file is dropped right after
        started = time.perf_counter()
        await dropzone.set_input_files(FilePayload(name=f"u{index}-{k}.png", mimeType="image/png", buffer=scan))
        try:
            await page.wait_for_function(
                "n => document.querySelectorAll('[data-testid=stMetricLabel]').length >= n",
                arg=k + 1,
                timeout=timeout_s * 1000,
            )
            samples.append(time.perf_counter() - started)
        except Exception:  # a file that never got its verdict: counted, not fatal
            lost += 1
    lost = max(lost, len(scans) - await verdicts.count())
    if shots is not None:  # what this user sees at the end
        await page.screenshot(path=str(shots / f"load-user{index}.png"), full_page=True)
    await context.close()
    return samples, lost


async def level(url: str, users: int, scans_per_user: int, timeout_s: float, shots: Path | None = None) -> dict:
    from playwright.async_api import async_playwright

    scans = [
        [png_bytes(synthetic_slice(512, tumour=(u + k) % 2 == 0, seed=100 * u + k)) for k in range(scans_per_user)]
        for u in range(users)
    ]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        results = await asyncio.gather(*(user(browser, url, scans[u], u, timeout_s, shots) for u in range(users)))
        await browser.close()
    samples = [s for got, _ in results for s in got]
    return {
        "users": users,
        "samples": len(samples),
        "upload_to_verdict_s_p50": round(statistics.median(samples), 2) if samples else None,
        "upload_to_verdict_s_p95": round(float(np.percentile(samples, 95)), 2) if samples else None,
        "files_without_verdict": sum(lost for _, lost in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--scans", type=int, default=5, help="scans per user")
    parser.add_argument("--model", default=None, help="model card (default: the shipped one)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds a verdict may take before it counts as lost"
    )
    parser.add_argument("--screenshots", type=Path, default=None, help="save each user's page at the end here")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run this bench.")
    report: dict = {"machine": machine(), "scans_per_user": args.scans, "levels": []}
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_app(args.model, data_dir, max(args.users))
        try:
            asyncio.run(level(url, 1, 1, args.timeout))  # warm-up, not reported: the first upload traces the heat map
            for users in args.users:
                probe = HealthProbe(url)
                probe.start()
                result = asyncio.run(level(url, users, args.scans, args.timeout, args.screenshots))
                probe.running = False
                probe.join()
                result["health_ms_p50"] = round(statistics.median(probe.samples), 1)
                result["health_ms_p95"] = round(float(np.percentile(probe.samples, 95)), 1)
                result["health_ms_max"] = round(max(probe.samples), 1)
                report["levels"].append(result)
                print(json.dumps(result), file=sys.stderr)
        finally:
            process.terminate()
            process.wait(timeout=30)
    levels = report["levels"]
    alone = next((lv for lv in levels if lv["users"] == 1 and lv["upload_to_verdict_s_p95"]), None)
    if alone is not None and levels[-1] is not alone and levels[-1]["upload_to_verdict_s_p95"]:  # one user, warm
        report["p95_ratio_highest_to_alone"] = round(
            levels[-1]["upload_to_verdict_s_p95"] / alone["upload_to_verdict_s_p95"], 2
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
