"""Orthanc's change feed over its REST API: the studies that became stable, which ``pacs watch`` pulls (DICOMweb
has no such feed). Failures are :class:`core.errors.PacsError` as for :mod:`core.pacs.client`: a watch that cannot
read the feed says so and the next one reads it again.
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import PacsMalformed, PacsNotFound, PacsTimedOut, PacsUnreachable
from core.pacs.client import Pacs
from core.pacs.http import answer_error, checked_address, read_timed_out, tls_failure

logger = logging.getLogger("btd.pacs")


class OrthancChanges:
    """Orthanc's change feed (its REST root, e.g. ``http://host:8042``): the studies that became stable."""

    def __init__(self, rest: str, session: Any, timeout_s: float = 10.0) -> None:
        self.rest = checked_address(rest).rstrip("/")
        self._session, self._timeout_s = session, timeout_s

    def _get(self, path: str, study: bool = False) -> Any:
        """The JSON at ``path``; a ``study`` read that finds nothing (HTTP 404) is :class:`PacsNotFound`."""
        import requests

        try:
            response = self._session.get(f"{self.rest}{path}", timeout=self._timeout_s)
            response.raise_for_status()
            return response.json()
        except requests.HTTPError as error:
            status = getattr(error.response, "status_code", None)
            if status == 404 and study:
                raise PacsNotFound("The PACS no longer has this study.") from error
            if status == 404:  # a DICOMweb address given as --rest: an address to check, waited out as an outage
                raise PacsUnreachable(
                    "No Orthanc change feed at the PACS's REST address (HTTP 404): check --rest (Orthanc's root, "
                    "not its /dicom-web)."
                ) from error
            raise answer_error(status, "change feed") from error
        except requests.exceptions.SSLError as error:
            raise PacsUnreachable(tls_failure(error)) from error
        except (requests.ConnectionError, requests.Timeout) as error:  # no answer in time, at first or mid-way
            if isinstance(error, requests.ReadTimeout) or read_timed_out(error):
                raise PacsTimedOut(f"The PACS's change feed did not answer within {self._timeout_s:g} s.") from error
            raise PacsUnreachable("The PACS does not answer; check its address, or try again later.") from error
        except ValueError as error:
            raise PacsMalformed("The PACS's change feed is not valid JSON.") from error
        except requests.RequestException as error:  # an answer cut off (a PACS restarting): the watch waits it out
            raise PacsUnreachable("The PACS's change feed broke off; try again later.") from error

    def stable_studies(self, since: int, limit: int = 100) -> tuple[list[tuple[int, str]], int, bool]:
        """((seq, Study Instance UID) of each study that became stable after change ``since``, the last change
        seen, whether the feed is done). A study deleted since it became stable (by hand, or recycled by a full
        PACS) is passed over: its 404 stopped the watch at that change for good."""
        page = self._get(f"/changes?since={int(since)}&limit={int(limit)}")
        try:
            found = []
            for change in page["Changes"]:
                if change["ChangeType"] != "StableStudy":
                    continue
                try:
                    tags = self._get(f"/studies/{change['ID']}", study=True)["MainDicomTags"]
                except PacsNotFound:
                    logger.info("event=pacs_study_gone seq=%s", change["Seq"])
                    continue
                found.append((int(change["Seq"]), str(tags["StudyInstanceUID"])))
            return found, int(page["Last"]), bool(page["Done"])
        except (KeyError, TypeError, ValueError) as error:
            raise PacsMalformed("The PACS's change feed is not what Orthanc sends.") from error

    def latest(self) -> int:
        """The number of the feed's last change (where a watch that begins from now starts after)."""
        try:
            return int(self._get("/changes?last")["Last"])
        except (KeyError, TypeError, ValueError) as error:
            raise PacsMalformed("The PACS's change feed is not what Orthanc sends.") from error

    @classmethod
    def of(cls, pacs: Pacs, rest: str) -> OrthancChanges:
        return cls(rest, pacs._session, pacs._timeout_s)
