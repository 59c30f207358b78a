"""Answers of a PACS that never end: each is read within a deadline and a byte budget, whatever its pace, length
or compression (local HTTP servers built here; no Orthanc needed)."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.errors import FileTooLarge, PacsMalformed, PacsTimedOut
from core.imaging.limits import StudyLimits
from core.pacs import http
from core.pacs.changes import OrthancChanges
from core.pacs.client import Pacs

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.501", "1.2.826.0.1.3680043.8.498.501.1"


@contextmanager
def serving(answer: Callable[[BaseHTTPRequestHandler], None], keep_alive: bool = False) -> Iterator[str]:
    """A local HTTP server whose every GET ``answer`` writes; its address (``keep_alive``: HTTP/1.1, its
    connections kept for the next request, as a PACS's are)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def do_GET(self) -> None:
            with suppress(OSError):  # the client cut the connection: what these tests expect
                answer(self)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def dripping(declared: bool) -> Callable[[BaseHTTPRequestHandler], None]:
    """An answer that sends a byte every 0.2 s, each well within the timeout, for far longer than any deadline."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if declared:
            handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(150):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    return answer


@pytest.mark.parametrize("declared", [True, False], ids=["with-length", "to-the-close"])
def test_an_answer_trickled_a_byte_at_a_time_ends_at_the_deadline_as_timed_out(monkeypatch, declared) -> None:
    """Each byte came within the 10 s timeout, so the answer had none: a search, and the watch's feed, waited as
    long as the PACS (or a broken proxy) kept trickling."""
    monkeypatch.setattr(http, "ANSWER_DEADLINE_S", 1.5)
    monkeypatch.setattr(http, "ANSWER_RATE", 2**60)  # no second more for the bytes it may hold
    with serving(dripping(declared)) as root:
        for ask in (
            lambda: Pacs(f"{root}/dicom-web", timeout_s=1).search(),
            lambda: OrthancChanges.of(Pacs(f"{root}/dicom-web", timeout_s=1), root).stable_studies(0),
        ):
            started = time.monotonic()
            with pytest.raises(PacsTimedOut, match=r"took more than 2 s to send one answer"):
                ask()
            assert 1.4 < time.monotonic() - started < 5


def test_an_answer_larger_than_the_budget_is_refused_as_it_arrives_compressed_or_not(monkeypatch) -> None:
    """A search answer of 3 MB against a 1 MB budget, plain and as a gzip bomb of a few KB: both refused, the bomb
    counted as decompressed (it is what fills the memory)."""
    monkeypatch.setattr(http, "ANSWER_BYTES", 2**20)
    body = b"[" + b" " * (3 * 2**20) + b"]"
    for encoding, sent in (("identity", body), ("gzip", gzip.compress(body))):

        def answer(handler: BaseHTTPRequestHandler, encoding: str = encoding, sent: bytes = sent) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/dicom+json")
            handler.send_header("Content-Encoding", encoding)
            handler.send_header("Content-Length", str(len(sent)))
            handler.end_headers()
            handler.wfile.write(sent)

        with serving(answer) as root, pytest.raises(PacsMalformed, match=r"more than 1 MB in one answer"):
            Pacs(f"{root}/dicom-web").search()
    assert len(gzip.compress(body)) < 2**15


@pytest.mark.filterwarnings("ignore:message sent by origin server")  # dicomweb-client's, of the single part
@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "single-part"])
def test_a_retrieved_image_without_end_is_refused_at_the_studys_byte_limit_holding_no_more(multipart) -> None:
    """A multipart part with no closing boundary grew in memory without bound (the study's byte limit was checked
    only once a part was whole): it is refused at the limit, as a study over the limits; so is an image sent as a
    single part (some servers do), which the client reads whole before any part is given."""
    sent: list[int] = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        if path.endswith("/series"):  # the study's series
            body = b'[{"0020000E": {"vr": "UI", "Value": ["%s"]}, "00080060": {"vr": "CS", "Value": ["MR"]},'
            body = (body % SERIES.encode()) + b' "00201209": {"vr": "IS", "Value": [1]}}]'
        elif path.endswith("/metadata"):  # one 64 x 64 image
            body = b'[{"00280010": {"vr": "US", "Value": [64]}, "00280011": {"vr": "US", "Value": [64]}}]'
        else:  # the images: a part that never ends
            handler.send_response(200)
            if multipart:
                handler.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=END')
                handler.end_headers()
                handler.wfile.write(b"--END\r\nContent-Type: application/dicom\r\n\r\n")
            else:
                handler.send_header("Content-Type", "application/dicom")
                handler.end_headers()
            for _ in range(64):  # 16 MB, never a boundary
                handler.wfile.write(b"\0" * 2**18)
                sent.append(2**18)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    limits = StudyLimits(max_total_bytes=2**20)
    with serving(answer) as root, pytest.raises(FileTooLarge, match=r"over the limits \(1024 images, 1 MB\)") as over:
        Pacs(f"{root}/dicom-web", limits=limits).retrieve_mr(STUDY)
    assert over.value.received == 0  # type: ignore[attr-defined]
    assert sum(sent) < 16 * 2**20  # the answer was cut, not read to its end


def test_a_redirects_own_answer_is_read_within_the_budget_too(monkeypatch) -> None:
    """requests reads a redirect's body before following it, and that answer was read without any bound."""
    monkeypatch.setattr(http, "ANSWER_BYTES", 2**20)

    def answer(handler: BaseHTTPRequestHandler) -> None:
        body = b" " * (8 * 2**20)
        handler.send_response(302)
        handler.send_header("Location", "/elsewhere")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with serving(answer) as root, pytest.raises(PacsMalformed, match=r"more than 1 MB in one answer"):
        Pacs(f"{root}/dicom-web").search()


def searched(handler: BaseHTTPRequestHandler, status: int = 200) -> None:
    body = b'[{"0020000D": {"vr": "UI", "Value": ["%s"]}}]' % STUDY.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/dicom+json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_an_answer_read_to_its_end_leaves_its_connection_to_the_next_request_past_its_deadline(monkeypatch) -> None:
    """The deadline cut the socket it had noted at the start: an answer read to its last byte gives its connection
    back to the pool, and the next request on it broke off when the first answer's deadline came."""
    monkeypatch.setattr(http, "ANSWER_DEADLINE_S", 1.0)
    monkeypatch.setattr(http, "ANSWER_RATE", 2**60)
    with serving(searched, keep_alive=True) as root:
        session = http.session_class()()
        first = session.get(f"{root}/dicom-web/studies", stream=True, timeout=5)
        reading = first.iter_content(4096)
        assert next(reading).startswith(b"[{")  # the whole answer: its connection back in the pool, the reader kept
        time.sleep(1.5)  # past the first answer's deadline
        second = session.get(f"{root}/dicom-web/studies", timeout=5)
        assert second.json()[0]["0020000D"]["Value"] == [STUDY]
        assert Pacs(f"{root}/dicom-web").search()[0].study_uid == STUDY  # and as the client reads


def test_an_answer_dropped_unread_ends_its_deadline_with_it() -> None:
    """An error answer a caller raised on before reading it (dicomweb-client does, for a retrieval) kept a timer
    thread and its socket for ten minutes, each watch adding more."""
    import gc

    def running() -> int:
        return sum(isinstance(thread, threading.Timer) for thread in threading.enumerate())

    with serving(lambda handler: searched(handler, status=404), keep_alive=True) as root:
        session, before = http.session_class()(), running()
        for _ in range(10):
            answer = session.get(f"{root}/dicom-web/studies/1/series/2", stream=True, timeout=5)
            assert answer.status_code == 404
            del answer
        gc.collect()
        deadline = time.monotonic() + 5
        while running() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running() == before


@pytest.mark.parametrize("uid", ["..", "1.2/../../patients", "1.2.3?x=1", "", "1." * 40 + "1"])
def test_a_uid_from_the_pacs_that_is_not_a_dicom_uid_never_reaches_a_search_address(uid: str) -> None:
    """A study UID of ".." searched every series of the PACS ("/dicom-web/series"): the path took it as given."""
    from core.errors import PacsMalformed
    from core.pacs.client import Pacs

    pacs = Pacs("http://127.0.0.1:1/dicom-web")
    for search in (lambda: pacs.series_of(uid), lambda: pacs.report_head("1.2.3", uid)):
        with pytest.raises(PacsMalformed, match="not a DICOM UID"):
            search()
