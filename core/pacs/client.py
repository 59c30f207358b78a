"""A PACS over DICOMweb: search studies and series (QIDO-RS, requests of its own asking for DICOM JSON alone),
retrieve a study's MR series into memory (WADO-RS through dicomweb-client; nothing written to disk, as for
uploads), store objects (STOW-RS, the same).

Every failure is a :class:`core.errors.PacsError` with a message safe to show: the address and credentials never
appear in it, nor does any patient data. TLS certificates are verified unless the configuration says otherwise.
Sizes are checked against the study limits (files and bytes) before and while retrieving.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from core.errors import (
    FileTooLarge,
    PacsAnswerTooLarge,
    PacsError,
    PacsMalformed,
    PacsNotFound,
    PacsQueryRefused,
    PacsTimedOut,
    PacsUnreachable,
    UnsupportedDicom,
)
from core.imaging.dicom import quiet_pydicom
from core.imaging.limits import DEFAULT_STUDY_LIMITS, StudyLimits
from core.pacs.http import answer_error, checked_address, read_timed_out, session_class, tls_failure

logger = logging.getLogger("btd.pacs")
SEARCH_LIMIT = 50  # studies a search lists (QIDO limit): a full list says that more may match
T = TypeVar("T")


@dataclass(frozen=True)
class StudyHit:
    """One study as a search lists it. ``patient_id`` and ``patient_name`` are for the radiologist's screen only:
    never stored, never logged."""

    study_uid: str
    date: str
    description: str
    modalities: tuple[str, ...]
    patient_id: str
    patient_name: str
    series: int | None
    instances: int | None


@dataclass(frozen=True)
class SeriesHit:
    series_uid: str
    modality: str
    description: str
    instances: int | None
    number: str = ""  # the Series Number, as a reader names the series


def within_limits(series: Sequence[SeriesHit], limits: StudyLimits) -> tuple[list[SeriesHit], list[SeriesHit]]:
    """The MR series a study's retrieval takes and those it leaves out, each in the PACS's order: a series over the
    sections one series may hold is left out, and of the rest the smallest are taken up to the study's images and
    series (a tumour protocol with a perfusion series of a thousand images was refused whole, and the watch never
    put it on the worklist)."""
    budget, used, taken = limits.max_files, 0, set()
    for hit in sorted(series, key=lambda s: s.instances or 0):
        fits = (hit.instances or 0) <= limits.max_sections and used + (hit.instances or 0) <= budget
        if fits and len(taken) < limits.max_series:
            taken.add(hit.series_uid)
            used += hit.instances or 0
    return [s for s in series if s.series_uid in taken], [s for s in series if s.series_uid not in taken]


def _series_number(value: Any) -> str:
    """A Series Number (IS) as digits, or "" when the PACS sent something else (it is quoted on the page)."""
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return ""


def _value(attributes: dict[str, Any], tag: str, default: Any = "") -> Any:
    """The first value of a DICOM JSON attribute (PS3.18 F.2), or ``default``."""
    values = (attributes.get(tag) or {}).get("Value") or []
    if not values:
        return default
    first = values[0]
    return first.get("Alphabetic", default) if isinstance(first, dict) else first


def _all(attributes: dict[str, Any], tag: str) -> tuple[str, ...]:
    return tuple(str(v) for v in (attributes.get(tag) or {}).get("Value") or [])


AS_STORED = (("application/dicom", "*"),)  # any transfer syntax: the app decodes what the PACS keeps
WILDCARDS = frozenset("*?,\\")  # QIDO's wildcards and its list separator (Orthanc splits on a comma, encoded too)


class Pacs:
    """One PACS's DICOMweb root (for Orthanc ``http://host:8042/dicom-web``)."""

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        verify_tls: bool | str = True,  # or a PEM file of the certificate authorities to trust
        timeout_s: float = 10.0,
        limits: StudyLimits = DEFAULT_STUDY_LIMITS,
    ) -> None:
        from dicomweb_client.api import DICOMwebClient

        url = checked_address(url)
        session = session_class()()
        session.verify = verify_tls
        if user is not None:
            session.auth = (user, password or "")
        self.url = url.rstrip("/")
        self.limits = limits
        self._session, self._timeout_s = session, timeout_s
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout_s)
        # the client's own retries (5 tries over 30 s on 408/429/503/504) ended in a RetryError nothing expected: a
        # busy PACS is said at once (:data:`core.pacs.http.BUSY`), and the watch or the reader tries again
        self._client.set_http_retry_params(retry=False)
        quiet_pydicom()  # the PACS's files are parsed by the client

    GONE = frozenset({"series metadata", "retrieval", "report retrieval"})  # what asks for one listed resource

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        import requests
        from pydicom.errors import InvalidDicomError

        try:
            yield
        except requests.HTTPError as error:
            status = getattr(error.response, "status_code", None)
            logger.warning("event=pacs_failed what=%s status=%s", what, status)
            if status == 404 and what in self.GONE:  # a resource it listed a moment ago: deleted meanwhile, not the
                raise PacsUnreachable(  # address (an administrator was sent to check the URL)
                    f"The PACS answered 'not found' to the {what} (HTTP 404): the study or series was deleted "
                    "meanwhile, or moved; the study is tried again."
                ) from error
            if status == 404:  # DICOMweb answers a search with none found; "not found" is the service's address
                raise PacsUnreachable(
                    f"The PACS answered 'not found' to the {what} (HTTP 404): no DICOMweb service at this address; "
                    "check it."
                ) from error
            raise answer_error(status, what) from error
        except requests.exceptions.SSLError as error:  # read as "does not answer", the address blamed
            logger.warning("event=pacs_tls_failed what=%s", what)
            raise PacsUnreachable(tls_failure(error)) from error
        except (requests.ConnectionError, requests.Timeout) as error:
            if isinstance(error, requests.ReadTimeout) or read_timed_out(error):  # connected, no answer in time, at
                logger.warning("event=pacs_timed_out what=%s", what)  # first or mid-way: the PACS is up
                raise PacsTimedOut(
                    f"The PACS did not answer the {what} within {self._timeout_s:g} s; try again later."
                ) from error
            logger.warning("event=pacs_unreachable what=%s", what)
            raise PacsUnreachable("The PACS does not answer; check its address, or try again later.") from error
        except (ValueError, KeyError, TypeError, AttributeError, InvalidDicomError) as error:  # not DICOMweb / DICOM
            logger.warning("event=pacs_malformed what=%s error=%s", what, type(error).__name__)
            raise PacsMalformed(f"The PACS's answer to the {what} is not valid DICOMweb.") from error
        except requests.RequestException as error:  # an answer cut off, too many redirects, ...
            logger.warning("event=pacs_failed what=%s error=%s", what, type(error).__name__)
            raise PacsUnreachable(f"The PACS's answer to the {what} broke off; try again later.") from error

    def _call(self, what: str, call: Callable[[], T]) -> T:
        with self._errors(what):
            return call()

    def search(
        self,
        patient_id: str | None = None,
        start: str | None = None,
        end: str | None = None,
        description: str | None = None,
        limit: int = SEARCH_LIMIT,
    ) -> list[StudyHit]:
        """MR studies matching the filters, newest first (dates YYYYMMDD; ``description`` matches anywhere); at most
        ``limit``, the first the PACS found in its own order (a full list may leave out newer ones: say so)."""
        filters = [("ModalitiesInStudy", "MR"), ("limit", str(limit))]
        filters += [("includefield", tag) for tag in ("00081030", "00201206", "00201208")]
        if patient_id:
            if WILDCARDS & set(patient_id):  # "*" listed every patient's studies, "A,B" two patients'
                raise PacsQueryRefused("A patient ID is searched exactly: it cannot hold * ? , or \\.")
            filters.append(("PatientID", patient_id))
        if start or end:
            filters.append(("StudyDate", f"{start or ''}-{end or ''}"))
        if description:  # words anywhere; spaces (and the list separators a PACS splits on) match as wildcards
            words = "".join(" " if c in WILDCARDS else c for c in description).split()
            if words:
                filters.append(("StudyDescription", "*" + "*".join(words) + "*"))
        query = "&".join(f"{name}={quote(value, safe='*-.,')}" for name, value in filters)
        found = self._call("search", lambda: self._get_json(f"{self.url}/studies?{query}"))
        with self._errors("search"):
            hits = [
                StudyHit(
                    study_uid=str(_value(s, "0020000D")),
                    date=str(_value(s, "00080020")),
                    description=str(_value(s, "00081030")),
                    modalities=_all(s, "00080061"),
                    patient_id=str(_value(s, "00100020")),
                    patient_name=str(_value(s, "00100010")),
                    series=_optional_int(_value(s, "00201206", None)),
                    instances=_optional_int(_value(s, "00201208", None)),
                )
                for s in found
            ]
        if any(not h.study_uid for h in hits):
            raise PacsMalformed("The PACS listed a study without its Study Instance UID.")
        if patient_id:  # exact, as promised: Orthanc matches a patient ID ignoring case ("zzmrn-7" found "ZZMRN-7")
            hits = [h for h in hits if h.patient_id.strip() == patient_id.strip()]  # a padded value is the same
        return sorted(hits, key=lambda h: h.date, reverse=True)

    def _get_json(self, url: str) -> list[dict[str, Any]]:
        """A QIDO-RS answer: a JSON list of DICOM JSON objects (an empty body is no match)."""
        response = self._session.get(url, headers={"Accept": "application/dicom+json"}, timeout=self._timeout_s)
        response.raise_for_status()
        found = response.json() if response.content else []
        if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
            raise ValueError("not a list of DICOM JSON objects")
        return found

    def patient_of(self, study_uid: str) -> list[tuple[str, ...]]:
        """The study's patient as the PACS files it now (ID, its issuer, name; the accession number): a report sent
        after the PACS corrected them went under the patient the study had when it was pulled."""
        tags = ("00100020", "00100021", "00100010", "00080050")
        query = f"StudyInstanceUID={quote(study_uid)}&" + "&".join(f"includefield={tag}" for tag in tags)
        found = self._call("study search", lambda: self._get_json(f"{self.url}/studies?{query}"))
        with self._errors("study search"):
            return sorted(tuple(str(_value(s, tag)) for tag in tags) for s in found)

    def _search(self, query: str, study_uid: str, series_uid: str | None = None) -> str:
        """The QIDO-RS address of a search of a study's series (or of one series' instances), asked for as DICOM
        JSON alone (the client library asked for two types, and Orthanc logged an error for each search). The UIDs
        come from the PACS: one that is not digits and dots ("..", "1/x") is refused, never put into the path."""
        uids = [study_uid] if series_uid is None else [study_uid, series_uid]
        if not all(re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) and len(uid) <= 64 for uid in uids):
            raise PacsMalformed("The PACS gave a UID that is not a DICOM UID (digits and dots).")
        path = f"studies/{study_uid}/series" + (f"/{series_uid}/instances" if series_uid else "")
        return f"{self.url}/{path}?{query}"

    def series_of(self, study_uid: str) -> list[SeriesHit]:
        fields = "&".join(f"includefield={tag}" for tag in ("0008103E", "00201209", "00080060", "00200011"))
        url = self._search(fields, study_uid)
        found = self._call("series search", lambda: self._get_json(url))
        with self._errors("series search"):
            return [
                SeriesHit(
                    series_uid=str(_value(s, "0020000E")),
                    modality=str(_value(s, "00080060")),
                    description=str(_value(s, "0008103E")),
                    instances=_optional_int(_value(s, "00201209", None)),
                    number=_series_number(_value(s, "00200011", None)),
                )
                for s in found
            ]

    def retrieve_mr(self, study_uid: str) -> tuple[list[bytes], list[str]]:
        """Every instance of the study's MR series within the study limits, as DICOM file bytes in memory, and why
        each series left out was (over the limits: the largest are left out, named, and the study then has no "no
        tumour" verdict). Refuses a study with no MR series, and one none of whose series fits (counted from the
        search before anything is retrieved, and again while retrieving)."""
        series, skipped = self._planned(study_uid)
        files: list[bytes] = []
        total = dropped = 0  # images received of series that cannot be read: an access all the same
        limits = self.limits
        over = f"The study is over the limits ({limits.max_files} images, {limits.max_total_bytes / 2**20:.0f} MB)."
        self._session.answer_bytes = self.limits.max_total_bytes  # a series' images come as one answer
        try:
            for hit in series:
                before, held = len(files), total
                try:
                    datasets = self._call(  # a single-part answer is read here, whole
                        "retrieval",  # as stored (JPEG 2000 too): asked for uncompressed, one that cannot transcode
                        lambda hit=hit: self._client.iter_series(study_uid, hit.series_uid, media_types=AS_STORED),
                    )  # failed
                    with self._errors("retrieval"):
                        for dataset in datasets:
                            _of(dataset, study_uid, hit.series_uid)
                            data = _file_bytes(dataset)
                            total += len(data)
                            files.append(data)
                            if total > self.limits.max_total_bytes or len(files) > self.limits.max_files:
                                raise FileTooLarge(over)
                except PacsAnswerTooLarge as error:  # one image without end, or a series beyond the study's bytes
                    raise FileTooLarge(over) from error
                except Unwritable as error:  # that series named as unread, not analysed; the others are (one
                    dropped += len(files) - before + 1  # series in a transfer syntax pydicom does not know failed
                    del files[before:]  # the whole study as "not valid DICOMweb")
                    total = held
                    skipped.append(f"DICOM series {hit.number or '?'}: {error} (not analysed)")
                    continue
                if hit.instances is not None and len(files) - before < hit.instances:  # never a series analysed short
                    logger.warning("event=pacs_retrieval_short got=%d listed=%d", len(files) - before, hit.instances)
                    raise PacsError(
                        f"The PACS gave {len(files) - before} of the {hit.instances} images it lists for a series; the "
                        "study was not analysed short. Try again."
                    )
        except (PacsError, FileTooLarge) as error:  # some images may have crossed: the caller audits the attempt
            error.received = len(files) + dropped  # type: ignore[attr-defined]
            raise
        finally:
            self._session.answer_bytes = None
        if not files:  # every series unreadable: refused, each named
            unreadable = UnsupportedDicom(f"No MR series of this study can be read: {'; '.join(skipped)}.")
            unreadable.received = dropped  # type: ignore[attr-defined]
            raise unreadable
        return files, skipped

    def _planned(self, study_uid: str) -> tuple[list[SeriesHit], list[str]]:
        """The study's MR series to retrieve, and why each other was left out, from its searches and metadata
        (no image held yet); :class:`FileTooLarge` when none fits."""
        every = self.series_of(study_uid)
        if not every:  # a mistyped UID read "no MR series", as if the study held other images
            raise PacsNotFound("The PACS has no study with this Study Instance UID (or it holds no series).")
        found = [s for s in every if s.modality.upper() == "MR"]
        if not found:
            raise PacsNotFound("This study has no MR series.")
        series, left_out = within_limits(found, self.limits)
        if not series:
            raise FileTooLarge(
                f"The study's smallest MR series holds {min(s.instances or 0 for s in found)} images; the limit is "
                f"{self.limits.max_files} per study ({self.limits.max_sections} sections a series)."
            )
        skipped = [
            f"DICOM series {s.number or '?'}: {s.instances} images, "
            f"left out to keep the study within {self.limits.max_files} images, {self.limits.max_series} series and "
            f"{self.limits.max_sections} sections a series (not retrieved, not analysed)"
            for s in left_out
        ]
        sizes = {hit.series_uid: self._size_of(study_uid, hit.series_uid) for hit in series}
        for hit in [hit for hit in series if sizes[hit.series_uid][1] > self.limits.max_sections]:  # multi-frame
            series.remove(hit)  # files: counted as images, a 12,800-frame file was retrieved whole, then refused
            skipped.append(  # the study with it
                f"DICOM series {hit.number or '?'}: a file of {sizes[hit.series_uid][1]} frames, left out to keep the "
                f"study within {self.limits.max_sections} sections a series (not retrieved, not analysed)"
            )
        if not series:
            raise FileTooLarge(f"No MR series of this study fits: {'; '.join(skipped)}.")
        pixels = sum(sizes[hit.series_uid][0] for hit in series)
        if pixels > self.limits.max_dicom_pixels:  # from the headers, before any image is held in memory
            raise FileTooLarge(
                f"The study's MR series hold {pixels / 2**20:.0f} M pixels; the limit is "
                f"{self.limits.max_dicom_pixels / 2**20:.0f} M (refused before retrieving them)."
            )
        return series, skipped

    def _size_of(self, study_uid: str, series_uid: str) -> tuple[int, int]:
        """(the pixels, the frames of its largest file) a series' images hold, from its metadata (WADO-RS, no pixel
        data): rows x columns x frames x samples per image (one very large multi-frame file was held, about four
        times its size, before the byte limit refused the study); each multi-frame file is read as a stack of its
        own, so its frames are held to the sections a series may have."""
        metadata = self._call("series metadata", lambda: self._client.retrieve_series_metadata(study_uid, series_uid))
        with self._errors("series metadata"):
            frames = [max(int(_value(m, "00280008", 1) or 1), 1) for m in metadata]  # NumberOfFrames (IS)
            pixels = sum(
                int(_value(m, "00280010", 0) or 0)  # Rows
                * int(_value(m, "00280011", 0) or 0)  # Columns
                * count
                * max(int(_value(m, "00280002", 1) or 1), 1)  # SamplesPerPixel
                for m, count in zip(metadata, frames, strict=True)
            )
            return pixels, max(frames, default=0)

    def report_head(self, study_uid: str, series_uid: str) -> Any | None:
        """The current version of our report in the study (the highest-numbered instance of its report series, as
        a dataset), or None when the PACS holds none."""
        url = self._search("includefield=00200013", study_uid, series_uid)
        found = self._call("report search", lambda: self._get_json(url))
        with self._errors("report search"):
            numbered = [(_optional_int(_value(i, "00200013", None)) or 0, str(_value(i, "00080018"))) for i in found]
        if not numbered:
            return None
        uid = max(numbered)[1]
        return self._call("report retrieval", lambda: self._client.retrieve_instance(study_uid, series_uid, uid))

    def holds(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """Whether the PACS lists instance ``sop_uid`` of the series (a search, after a store it answered)."""
        url = self._search(f"SOPInstanceUID={quote(sop_uid)}", study_uid, series_uid)
        found = self._call("report search", lambda: self._get_json(url))
        with self._errors("report search"):
            return any(str(_value(i, "00080018")) == sop_uid for i in found)

    def store(self, datasets: Sequence[Any]) -> list[str]:
        """Store DICOM datasets (STOW-RS); returns the SOP Instance UIDs the PACS accepted."""
        response = self._call("store", lambda: self._client.store_instances(list(datasets)))
        with self._errors("store"):
            stored = response.get("ReferencedSOPSequence", [])
            failed = response.get("FailedSOPSequence", [])
            if failed:
                raise PacsError(f"The PACS refused {len(failed)} of the {len(datasets)} objects sent.")
            accepted = [str(item.ReferencedSOPInstanceUID) for item in stored]
            # an answer that confirms fewer objects than were sent is no success (dicomweb-client reads an answer
            # labelled with a charset as empty, its failures with it)
            missing = {str(ds.SOPInstanceUID) for ds in datasets} - set(accepted)
            if missing:
                raise PacsError(
                    f"The PACS confirmed {len(datasets) - len(missing)} of the {len(datasets)} objects sent; "
                    "send again."
                )
            return accepted


def _optional_int(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


class Unwritable(Exception):
    """A retrieved image that cannot be written as a DICOM file (its transfer syntax unknown to pydicom): its
    series cannot be read."""


ANOTHER_SERIES = (
    "The PACS answered a series' retrieval with images of another study or series: nothing of this study is "
    "analysed, saved or sent (its report would have gone into that study). Ask the PACS administrator."
)


def _of(dataset: Any, study_uid: str, series_uid: str) -> None:
    """:class:`PacsMalformed` for an image not of the study and series asked for (its report went into the other)."""
    if (str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SeriesInstanceUID", ""))) != (study_uid, series_uid):
        logger.warning("event=pacs_retrieval_another_series")
        raise PacsMalformed(ANOTHER_SERIES)


def _file_bytes(dataset: Any) -> bytes:
    """A retrieved dataset as DICOM file bytes (in memory), for the same reader uploads go through."""
    from pydicom import dcmwrite
    from pydicom.uid import UID

    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
        if UID(syntax).is_transfer_syntax:  # a syntax pydicom knows: the image itself is faulty (not valid DICOMweb)
            raise
        syntax = "".join(c for c in syntax if c in "0123456789.")[:64] or "not given"  # a UID, nothing else shown
        raise Unwritable(f"its images are in a transfer syntax this app cannot read ({syntax})") from error
    return buffer.getvalue()
