"""What every request to the PACS shares, the DICOMweb calls (:mod:`core.pacs.client`) and Orthanc's change feed
(:mod:`core.pacs.changes`) alike: the address check, the session (its TLS setting held on every request) and what
an HTTP error answer means to the reader."""

from __future__ import annotations

from functools import cache
from typing import Any

from core.errors import PacsError, PacsForbidden, PacsRefused, PacsUnreachable

BUSY = frozenset({408, 429, 502, 503, 504})  # answers of a PACS (or its proxy) that is overloaded or restarting


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
        """A session whose ``verify`` holds for every request: requests lets REQUESTS_CA_BUNDLE in the environment
        replace a session's own (a hospital's authority file, or no check at all) on each request."""

        def request(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("verify", self.verify)
            return super().request(*args, **kwargs)

    return Session


TLS_FAILED = (
    "The PACS's TLS certificate could not be verified: a hospital's own certificate authority goes in [pacs] ca_file "
    "(or BTD_PACS_CA_FILE), a PEM file."
)


def checked_address(url: str) -> str:
    """An http(s) address with a host and no credentials in it, stripped; :class:`PacsError` otherwise (never
    echoing it: an address written with its credentials would reach the message and the log)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise PacsError("The PACS address is not an http(s) URL with a host (credentials go in their options).")
    return url.strip()


def read_timed_out(error: Exception) -> bool:
    """Whether a lost connection was an answer that stalled past the timeout mid-way (requests reports a read
    timeout after the answer began as a ConnectionError)."""
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(arg, ReadTimeoutError) for arg in error.args)
