"""What every request to the PACS shares, the DICOMweb calls (:mod:`core.pacs.client`) and Orthanc's change feed
(:mod:`core.pacs.changes`) alike: the address check, the session (its TLS setting held on every request) and what
an HTTP error answer means to the reader."""

from __future__ import annotations

import socket
import threading
import weakref
from contextlib import suppress
from functools import cache
from typing import Any

from core.errors import PacsAnswerTooLarge, PacsError, PacsForbidden, PacsRefused, PacsTimedOut, PacsUnreachable

BUSY = frozenset({408, 429, 502, 503, 504})  # answers of a PACS (or its proxy) that is overloaded or restarting
ANSWER_BYTES = 128 * 2**20  # one answer as read (decompressed): a search, a series' metadata, the feed, a report
ANSWER_DEADLINE_S = 600.0  # one answer whole (the timeout bounds each wait between two reads, not the answer), and
ANSWER_RATE = 2**20  # a second more for each MB it may hold: a 1 GB series at a megabyte a second is not cut


def answer_error(status: int | None, what: str) -> PacsError:
    """What an HTTP error answer to the ``what`` means to the reader: a refused password (401), a refused request
    (403: the account may read but not store, say), a busy PACS (:data:`BUSY`, tried again later) or a failure."""
    if status == 401:
        return PacsRefused("The PACS refused the user name or password.")
    if status == 403:
        return PacsForbidden(
            f"The PACS refused the {what} to this account (HTTP 403): it may not be allowed to do this; ask the PACS "
            "administrator."
        )
    if status in BUSY:
        return PacsUnreachable(f"The PACS is busy or unavailable (HTTP {status}) for the {what}; try again later.")
    return PacsError(f"The PACS failed the {what} (HTTP {status}).")


@cache
def session_class() -> type:
    import requests  # imported when a PACS is first used, as everywhere here

    class Session(requests.Session):
        """A session whose ``verify`` holds for every request (requests lets REQUESTS_CA_BUNDLE in the environment
        replace a session's own, a hospital's authority file or no check at all, on each request), and whose every
        answer, a redirect's too, is read within ``answer_bytes`` and its deadline (:func:`bounded`)."""

        answer_bytes: int | None = None  # a retrieval sets the study's byte limit for its answers

        def __init__(self) -> None:
            super().__init__()
            self.hooks["response"].append(self._bounded)  # each answer as it comes, before a redirect reads it

        def _bounded(self, response: Any, **_: Any) -> None:
            most = self.answer_bytes or ANSWER_BYTES
            bounded(response, most, ANSWER_DEADLINE_S + most / ANSWER_RATE)

        def request(self, method: str, url: str, stream: bool = False, **kwargs: Any) -> Any:
            kwargs.setdefault("verify", self.verify)
            response = super().request(method, url, stream=True, **kwargs)
            if not stream:
                response.content  # noqa: B018 -- read whole now, as requests does unasked, within the bounds
            return response

    return Session


def bounded(response: Any, most: int, seconds: float) -> None:
    """Make ``response``'s body readable only within ``most`` bytes (as decompressed) and ``seconds`` from now:
    a multipart part with no boundary grew in memory without end, and an answer trickled a byte at a time, each
    within the timeout, held a retrieval (and the watch behind it) for ever. At the deadline the connection is cut
    while the answer still holds it, which ends a read blocked on it; either way :class:`PacsAnswerTooLarge` or
    :class:`PacsTimedOut` is raised. Nothing here keeps the answer alive: an answer dropped unread (an error a
    caller raised before reading it) ends its timer with it."""
    import requests

    answer, expired = weakref.ref(response), threading.Event()

    def cut() -> None:
        expired.set()
        held = answer()
        connection = None if held is None else _socket_of(held.raw)  # None once back in the pool: another's now
        if connection is not None:
            with suppress(OSError):  # already closed
                socket.socket.shutdown(connection, socket.SHUT_RDWR)  # the plain socket's, under TLS too

    def late() -> PacsTimedOut:
        took = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
        return PacsTimedOut(f"The PACS took more than {took} to send one answer; try again later.")

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    weakref.finalize(response, timer.cancel)
    read = type(response).iter_content  # not the bound method: the answer would hold itself through its reader

    def iter_content(chunk_size: int | None = 1, decode_unicode: bool = False) -> Any:
        got, held = 0, answer()
        if held is None:
            return
        try:
            for chunk in read(held, chunk_size, decode_unicode):
                got += len(chunk)
                if got > most:
                    raise PacsAnswerTooLarge(f"The PACS sent more than {most / 2**20:g} MB in one answer; refused.")
                if expired.is_set():
                    raise late()
                yield chunk
        except requests.RequestException as error:  # the connection cut at the deadline reads as a broken answer
            if expired.is_set():
                raise late() from error
            raise
        finally:
            timer.cancel()
        if expired.is_set():  # an answer without a length ends where it was cut
            raise late()

    response.iter_content = iter_content


TLS_FAILED = (
    "The PACS's TLS certificate could not be verified: a hospital's own certificate authority goes in [pacs] ca_file "
    "(or BTD_PACS_CA_FILE), a PEM file."
)
TLS_HANDSHAKE = (
    "The TLS handshake with the PACS failed (not its certificate): is the address's port one that speaks https, "
    "and does the PACS accept this client's TLS versions?"
)


def tls_failure(error: BaseException) -> str:
    """What a TLS failure says: the certificate authority's advice only when a certificate could not be verified
    (an https address at a plain-http port was sent off to install a certificate authority)."""
    return TLS_FAILED if "certificate verify failed" in str(error).lower() else TLS_HANDSHAKE


def checked_address(url: str) -> str:
    """An http(s) address with a host and no credentials in it, stripped; :class:`PacsError` otherwise (never
    echoing it: an address written with its credentials would reach the message and the log)."""
    from urllib.parse import urlsplit

    refused = PacsError(
        "The PACS address is not an http(s) URL with a host and a port from 1 to 65535 (credentials go in their "
        "options)."
    )
    try:  # a port past 65535, or a bracket left open, raised Python's own error; a port 0 no connection can use
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password or port == 0:
        raise refused
    return url.strip()


def read_timed_out(error: Exception) -> bool:
    """Whether a lost connection was an answer that stalled past the timeout mid-way (requests reports a read
    timeout after the answer began as a ConnectionError)."""
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(arg, ReadTimeoutError) for arg in error.args)


def _socket_of(raw: Any) -> socket.socket | None:
    """The socket an answer (urllib3's) is still read from: its connection's until it is back in the pool, or,
    for an answer after which the connection closes (http.client then lets go of it), its reader's until read."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        sock = getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None
