"""End to end in Debian chromium: start `streamlit run`, upload a scan, wait for the verdict, check statistics.

Skipped when /usr/bin/chromium is missing (`.ci/run` installs it). Screenshots go to artifacts/.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scans import png_bytes, synthetic_slice

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (.ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run` on a free loopback port with a fresh data directory and the shipped (or a tiny) model."""
    yield from serve(tmp_path_factory)


@pytest.fixture(scope="module")
def lesion_server(tmp_path_factory: pytest.TempPathFactory, tiny_lesion_card: Path) -> Iterator[str]:
    """The same server with the tiny lesion segmenter beside the model (its "lesion" is the whole brain box)."""
    yield from serve(tmp_path_factory, {"BTD_LESION_MODEL": str(tiny_lesion_card)})


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """The same server pointed at a development Orthanc holding two brain MR studies of one patient (skipped with
    the reason when Debian's orthanc / orthanc-dicomweb are missing); yields (the app's URL, the Orthanc)."""
    from core.pacs.client import Pacs
    from core.pacs.orthanc import DevOrthanc, available
    from tests.test_pacs_page import OTHER_STUDY, TUMOUR_STUDY, put_study

    reason = available()
    if reason:
        pytest.skip(reason)
    with DevOrthanc() as orthanc:
        pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
        put_study(pacs, TUMOUR_STUDY, range(2, 5), "20261201", "MR BRAIN WITH CONTRAST")
        put_study(pacs, OTHER_STUDY, None, "20261103", "MR HEAD ROUTINE")
        settings = {
            "BTD_PACS_URL": orthanc.dicomweb,
            "BTD_PACS_USER": orthanc.user,
            "BTD_PACS_PASSWORD": orthanc.password,
        }
        for url in serve(tmp_path_factory, settings):
            yield url, orthanc


def serve(tmp_path_factory: pytest.TempPathFactory, extra: dict[str, str] | None = None) -> Iterator[str]:
    from core.config import model_card_path
    from tests.scans import write_model_card

    shipped = model_card_path()
    card = shipped if shipped.exists() else write_model_card(tmp_path_factory.mktemp("model"))
    port = free_port()
    env = {
        **os.environ,
        "BTD_MODEL": str(card),
        "BTD_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(extra or {}),
    }
    env.pop("MONGODB_URI", None)
    seed_history(Path(env["BTD_DATA_DIR"]))
    log = (tmp_path_factory.mktemp("log") / "streamlit.log").open("w")
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
            "--secrets.files",  # the tests' own (tests/conftest.py), never the checkout's real secrets file
            env["BTD_SECRETS"],
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        process.terminate()
        pytest.fail("streamlit did not start within 60 s")
    yield url
    process.terminate()
    process.wait(timeout=20)
    log.close()


def seed_history(data_dir: Path) -> None:
    """Three weeks of earlier results (8 to 14 a day, a third tumours) so the statistics have rates to draw."""
    from datetime import UTC, datetime, timedelta

    from core.domain.people import Review
    from core.services import accounts
    from core.services.access import COMMAND_LINE
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store = SQLiteStore(data_dir / "results.sqlite3")
    for name, role in (("dr-browser", "radiologist"), ("boss-browser", "supervisor")):
        accounts.add_account(store, COMMAND_LINE, name, role, PASSWORD)
    today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    n = 1000
    for day in range(1, 22):
        for k in range(8 + day % 7):
            n += 1
            label = ("glioma", "notumor", "notumor", "pituitary", "notumor", "meningioma")[(n * 7 + day) % 6]
            record = make_record(n, today - timedelta(days=day, minutes=k * 13), label, "1.4.0", 0.8 + (n % 20) / 100)
            store.add(record)
            if day > 10 and k < 4:  # 44 reviewed: the last 11 of them overridden (agreement 75.0 %)
                final = label if n % 4 else ("notumor" if label != "notumor" else "glioma")
                action = "agree" if final == label else "override"
                store.add_review(
                    Review(record.id, "dr-earlier", record.created_at + timedelta(hours=3), action, label, final)
                )


PASSWORD = "browser test password"


def sign_in(page, name: str) -> None:
    page.get_by_role("textbox", name="Account").fill(name)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    wait_idle(page)


def sign_out(page) -> None:
    page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
    wait_idle(page)


def wait_idle(page) -> None:
    page.wait_for_timeout(250)
    page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for(
        state="attached", timeout=60_000
    )


@pytest.mark.heavy  # it times the upload to the verdict: run alone (make test), never beside another worker
def test_upload_to_verdict_and_statistics_in_chromium(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import FilePayload, expect, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(server)
        wait_idle(page)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)  # a visitor: the form only
        expect(page.get_by_test_id("stFileUploaderDropzoneInput")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "sign-in.png"), full_page=True)
        sign_in(page, "dr-browser")
        expect(page.get_by_text("Scan triage")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stSidebar").get_by_text("version")).to_be_visible(timeout=60_000)  # model warm

        scan = png_bytes(synthetic_slice(512, tumour=True, seed=7))
        field = page.get_by_role("textbox", name="Patient reference (optional)")  # not the stale sign-in form's
        field.fill("ZZCANARY browser patient")
        field.press("Enter")  # a rerun starts; the file is dropped while it runs (files used to vanish here)
        started = time.perf_counter()
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
            [FilePayload(name="scan.png", mimeType="image/png", buffer=scan)]
        )
        expect(page.get_by_test_id("stMetricLabel").filter(has_text="Verdict")).to_be_visible(timeout=30_000)
        seconds = time.perf_counter() - started
        wait_idle(page)
        expect(page.locator("figure.btd-image img[src^='data:image/png']")).to_have_count(3)
        page.get_by_test_id("stDataFrame").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # let the table canvas paint before the screenshot
        page.screenshot(path=str(ARTIFACTS / "scan-page.png"), full_page=True)
        (ARTIFACTS / "upload-to-verdict-seconds.txt").write_text(f"{seconds:.3f}\n")
        print(f"upload to verdict: {seconds:.3f} s")

        too_big = tmp_path / "huge.png"
        with too_big.open("wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n")
            handle.truncate(51 * 2**20)
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files([str(too_big)])
        expect(page.get_by_text("50.0MB or smaller", exact=False).first).to_be_visible(timeout=30_000)
        field.fill("ZZCANARY browser patient 2")  # a correction: Enter re-runs the field alone, yet the warning and
        field.press("Enter")  # the Move button (drawn outside it) come at once, not at some later page run
        kept = page.get_by_text("1 result of this session is kept under the patient reference", exact=False)
        expect(kept).to_be_visible(timeout=30_000)
        expect(page.get_by_role("button", name="Move 1 result to this reference")).to_be_visible()

        # the radiologist reads it on the worklist and overrides the model's verdict
        page.get_by_test_id("stSidebarNav").get_by_text("Worklist").click()
        wait_idle(page)
        expect(page.get_by_text("Model's verdict")).to_be_visible(timeout=60_000)
        expect(page.locator("figure.btd-image img[src^='data:image/png']")).to_have_count(
            3, timeout=60_000
        )  # the stored image, crop, heat map
        verdict = page.get_by_test_id("stMetric").filter(has_text="Model's verdict").get_by_test_id("stMetricValue")
        model_said = verdict.inner_text()
        chooser = page.get_by_test_id("stForm").get_by_test_id("stSelectbox")
        chooser.scroll_into_view_if_needed()  # with room below it for its options: at the window's bottom edge (the
        page.mouse.wheel(0, 400)  # panel above it grew) they never opened
        chooser.click()
        page.get_by_role("option").filter(has_not_text=model_said).first.click()
        page.get_by_role("button", name="Save override").click()
        wait_idle(page)
        expect(page.get_by_text("Review saved").first).to_be_visible(timeout=30_000)  # and the next unread is shown
        wait_idle(page)  # the message shows while the page still runs: a click then met a list being redrawn
        reviewed_option = page.get_by_role("option", name="reviewed", exact=True)
        for _ in range(3):  # Show: not yet reviewed; opened again if a late redraw closed it
            page.get_by_test_id("stMain").get_by_test_id("stSelectbox").first.click()
            try:
                reviewed_option.wait_for(state="visible", timeout=5_000)
                break
            except PlaywrightTimeout:
                continue
        reviewed_option.click()
        wait_idle(page)
        expect(page.get_by_text("Disagreement: the model said")).to_be_visible(timeout=30_000)  # the newest reviewed
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "worklist-page.png"), full_page=True)
        reviews, main = page.get_by_test_id("stDataFrame").last, page.get_by_test_id("stMain")
        assert reviews.bounding_box()["width"] > 0.6 * main.bounding_box()["width"]  # in the verdict's narrow
        # column the reviews' reasons and note were cut off

        sign_out(page)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=30_000)
        sign_in(page, "boss-browser")
        agreement = page.get_by_test_id("stMetric").filter(has_text="Agreement").get_by_test_id("stMetricValue")
        expect(agreement).to_have_text("73.3%", timeout=60_000)  # 33 of 45 reviewed: one more disagreement
        reviewed = page.get_by_test_id("stMetric").filter(has_text="Reviewed").get_by_test_id("stMetricValue")
        expect(reviewed).to_have_text("45")
        scans_metric = page.get_by_test_id("stMetric").filter(has_text="Studies with a verdict")
        expect(scans_metric.get_by_test_id("stMetricValue")).not_to_have_text("0", timeout=30_000)
        today = page.get_by_test_id("stMetric").filter(has_text="Today").get_by_test_id("stMetricValue")
        expect(today).to_have_text("withheld")  # one scan today: a small count, withheld
        page.locator("[data-testid='stPlotlyChart'] .main-svg").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "statistics-page.png"), full_page=True)
        browser.close()
    assert seconds < 10  # the 1.5 s target is measured and reported, not asserted in a shared CI machine


def test_a_study_pages_in_the_quick_scroller_and_opens_in_the_viewer(server: str) -> None:
    """A zipped series on the Study page: the study verdict, then the quick scroller moves one section per arrow key
    in the browser alone, and "Open in the viewer" brings the detailed view to that section."""
    from playwright.sync_api import expect, sync_playwright

    from core.imaging.phantom_series import dicom_series, head_volume, zipped

    study = zipped(dicom_series(head_volume(24, 128, range(10, 14)), spacing=2.0))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(server)
        wait_idle(page)
        sign_in(page, "dr-browser")
        page.get_by_test_id("stSidebarNav").get_by_text("Study", exact=True).click()
        wait_idle(page)
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
            {"name": "study.zip", "mimeType": "application/zip", "buffer": study}
        )
        page.get_by_role("button", name="Analyse this study").click()
        expect(page.get_by_test_id("stMetricLabel").filter(has_text="Study verdict")).to_be_visible(timeout=120_000)
        wait_idle(page)
        scroller = page.locator(".btd-cine").first
        expect(scroller).to_be_visible(timeout=30_000)
        start = int(scroller.get_attribute("data-section") or "0")
        assert 1 <= start <= 24
        # the patient's directions on the image's edges, as the viewer draws them (a caption below named them)
        sides = {side: page.locator(f".btd-cine-letter[data-side={side}]").first for side in ("left", "right", "top")}
        assert {side: mark.inner_text() for side, mark in sides.items()} == {"left": "R", "right": "L", "top": "A"}
        scroller.click(position={"x": 5, "y": 5})
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        expect(page.locator(".btd-cine-title")).to_contain_text(f"Section {min(start + 3, 24)} of 24 · ")
        assert scroller.get_attribute("data-section") == str(min(start + 3, 24))
        page.get_by_role("button", name="Open in the viewer").click()
        expect(page.locator(".gtitle").filter(has_text=f"Section {min(start + 3, 24)} of 24")).to_have_count(
            1, timeout=30_000
        )
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "study-quick-scroll.png"), full_page=True)
        browser.close()


def test_a_study_from_the_pacs_is_searched_picked_analysed_and_its_report_sent_back(pacs_server) -> None:
    """The Study page's "From the PACS" tab: search by patient ID, pick the tumour study, its verdict and viewer as
    for an upload, then "Send to PACS" puts the report (an SR series) into that study."""
    from playwright.sync_api import expect, sync_playwright

    from core.pacs.client import Pacs
    from tests.test_pacs_page import PATIENT, TUMOUR_STUDY

    url, orthanc = pacs_server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url)
        wait_idle(page)
        sign_in(page, "dr-browser")
        page.get_by_test_id("stSidebarNav").get_by_text("Study", exact=True).click()
        wait_idle(page)
        page.get_by_role("tab", name="From the PACS").click()
        page.get_by_role("textbox", name="Patient ID").fill(PATIENT)
        page.get_by_role("button", name="Search the PACS").click()
        wait_idle(page)
        page.get_by_role("tab", name="From the PACS").click()  # on a loaded machine the rerun may paint tab 1 first
        page.get_by_test_id("stDataFrame").filter(visible=True).first.wait_for(timeout=60_000)
        page.get_by_test_id("stSelectbox").filter(has_text="Study to analyse").click()
        page.get_by_role("option", name="MR BRAIN WITH CONTRAST").click()
        wait_idle(page)
        page.wait_for_timeout(1500)  # let the table canvas paint before the screenshot
        page.screenshot(path=str(ARTIFACTS / "pacs-search.png"), full_page=True)

        page.get_by_role("button", name="Analyse the chosen study").click()
        expect(page.get_by_test_id("stMetricLabel").filter(has_text="Study verdict")).to_be_visible(timeout=120_000)
        wait_idle(page)
        expect(page.get_by_text("Series 1 · Axial · 6 sections")).to_be_visible()
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "pacs-verdict.png"), full_page=True)

        page.get_by_role("button", name="Send to PACS").click()
        expect(page.get_by_text("Sent: the PACS holds")).to_be_visible(timeout=60_000)
        wait_idle(page)
        page.mouse.move(5, 5)  # away from the button: no tooltip over the verdict
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "pacs-sent.png"), full_page=False)
        browser.close()
    modalities = {s.modality for s in Pacs(orthanc.dicomweb, orthanc.user, orthanc.password).series_of(TUMOUR_STUDY)}
    assert {"MR", "SR"} <= modalities


def magenta_pixels(png: bytes) -> int:
    """How many pixels of a screenshot carry the lesion outline's magenta."""
    import cv2
    import numpy as np

    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(int)
    return int(((bgr[:, :, 2] > 200) & (bgr[:, :, 1] < 60) & (bgr[:, :, 0] > 200)).sum())


def test_a_tumour_slice_gets_its_lesion_outlined_and_measured_on_the_scan_page(lesion_server: str) -> None:
    """With a segmenter served, the original is shown with the lesion's outline (magenta) and its area beside the
    verdict; the Outline toggle takes it off the image."""
    from playwright.sync_api import FilePayload, expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(lesion_server)
        wait_idle(page)
        sign_in(page, "dr-browser")
        expect(page.get_by_text("Scan triage")).to_be_visible(timeout=60_000)
        scan = png_bytes(synthetic_slice(512, tumour=True, seed=7))
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
            [FilePayload(name="tumour.png", mimeType="image/png", buffer=scan)]
        )
        expect(page.get_by_test_id("stMetricLabel").filter(has_text="Verdict")).to_be_visible(timeout=60_000)
        wait_idle(page)
        expect(page.get_by_text("px (no pixel spacing)")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("not a diagnosis").first).to_be_visible()
        original = page.locator("figure.btd-image").first
        expect(original.locator("figcaption")).to_contain_text("lesion outlined (magenta)")
        original.locator("img").scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        outlined = magenta_pixels(original.locator("img").screenshot())
        page.screenshot(path=str(ARTIFACTS / "scan-lesion-outline.png"), full_page=True)
        page.get_by_text("Outline", exact=True).click()  # the toggle: the original without the outline
        wait_idle(page)
        expect(original.locator("figcaption")).not_to_contain_text("lesion outlined", timeout=30_000)
        page.wait_for_timeout(500)
        plain = magenta_pixels(original.locator("img").screenshot())
        browser.close()
    assert outlined > 200 and plain == 0, (outlined, plain)


def test_a_study_shows_its_lesion_volume_and_outlines_the_sections_in_both_viewers(lesion_server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from core.imaging.phantom_series import dicom_series, head_volume, zipped

    study = zipped(dicom_series(head_volume(12, 128, range(4, 8)), spacing=2.0))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(lesion_server)
        wait_idle(page)
        sign_in(page, "dr-browser")
        page.get_by_test_id("stSidebarNav").get_by_text("Study", exact=True).click()
        wait_idle(page)
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
            {"name": "study.zip", "mimeType": "application/zip", "buffer": study}
        )
        page.get_by_role("button", name="Analyse this study").click()
        expect(page.get_by_test_id("stMetricLabel").filter(has_text="Study verdict")).to_be_visible(timeout=120_000)
        wait_idle(page)
        expect(page.get_by_text("Lesion volume:")).to_contain_text("mL, sections 1–12", timeout=30_000)
        magenta = page.locator(".shapelayer path[style*='rgb(255, 0, 255)']")  # the outline on the section figure
        expect(magenta.first).to_be_attached(timeout=30_000)
        cine = page.locator(".btd-cine-stage img").first
        expect(cine).to_be_visible(timeout=30_000)
        expect(page.locator(".btd-cine-title")).to_contain_text("lesion")
        page.wait_for_timeout(1000)
        outlined = magenta_pixels(cine.screenshot())
        page.screenshot(path=str(ARTIFACTS / "study-lesion-outline.png"), full_page=True)
        page.get_by_text("Outline", exact=True).click()
        wait_idle(page)
        expect(magenta).to_have_count(0, timeout=30_000)
        page.wait_for_timeout(1000)
        plain = magenta_pixels(cine.screenshot())
        browser.close()
    assert outlined > 100 and plain == 0, (outlined, plain)


def test_upload_endpoint_refuses_requests_without_the_xsrf_token(server: str) -> None:
    request = urllib.request.Request(
        f"{server}/_stcore/upload_file/session/file", data=b"x", method="PUT", headers={"Content-Type": "image/png"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 403


def test_the_websocket_refuses_foreign_hosts_and_origins(server: str) -> None:
    """DNS rebinding and cross-site WebSocket hijacking: only the configured host names, same-origin pages."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    url = server.replace("http://", "ws://") + "/_stcore/stream"

    async def opens(headers: dict[str, str]) -> bool:
        """True when the socket is still open two seconds on (a refused one is closed at once, code 1008)."""
        try:
            async with connect(url, additional_headers=headers, subprotocols=["streamlit"], open_timeout=5) as ws:
                try:
                    await asyncio.wait_for(ws.recv(), timeout=2)
                except TimeoutError:
                    return True  # nothing to say until the client speaks: the connection was accepted
                return True
        except (InvalidStatus, WebSocketException, OSError):
            return False

    assert asyncio.run(opens({}))  # this machine, no Origin: as a local tool would
    assert asyncio.run(opens({"Origin": server}))  # the app's own page
    assert not asyncio.run(opens({"Origin": "http://evil.example"}))
    assert not asyncio.run(opens({"Host": "evil.example"}))


def session_cookie(context, page, timeout_s: float = 60.0) -> dict:
    """The session cookie, once the page's script has written it: the sidebar can show "Signed in as" a moment
    before the component that sets the cookie has run (seen on a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [c for c in context.cookies() if c["name"] == "btd_session"]
        if found:
            return found[0]
        page.wait_for_timeout(250)
    raise AssertionError(f"no session cookie {timeout_s:.0f} s after signing in")


def test_a_reload_or_a_typed_address_keeps_the_user_signed_in_until_they_sign_out(server: str) -> None:
    """F5 or a typed URL once signed the user out. The session cookie signs the page load in again; signing out
    forgets it, so a reload after signing out shows the sign-in form."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        page = context.new_page()
        page.goto(server)
        wait_idle(page)
        sign_in(page, "boss-browser")
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=60_000)
        cookie = session_cookie(context, page)
        assert cookie["sameSite"] == "Strict" and len(cookie["value"]) >= 40
        page.reload()
        wait_idle(page)
        expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("button", name="Sign in")).to_have_count(0)
        page.goto(f"{server}/statistics")  # a typed address
        wait_idle(page)
        expect(page.get_by_role("heading", name="Statistics")).to_be_visible(timeout=60_000)
        expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "reload-signed-in.png"), full_page=False)
        page.keyboard.press("Escape")  # Streamlit's own "Page not found" notice on a typed address, if shown
        wait_idle(page)
        sign_out(page)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        # the browser forgets the token too (the sign-in form the entry script shows did not write the deletion: the
        # dead token stayed in the browser for a working day)
        page.wait_for_timeout(1000)
        assert not [c for c in context.cookies() if c["name"] == "btd_session" and c["value"]]
        page.reload()
        wait_idle(page)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        stolen = context.new_page()  # the old cookie value, replayed: forgotten at sign-out
        context.add_cookies([{**cookie, "sameSite": "Strict"}])
        stolen.goto(server)
        wait_idle(stolen)
        expect(stolen.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        browser.close()
