"""Domain errors: each names one reason a scan cannot be used, in words a radiologist understands.

The edges (CLI, Streamlit pages) translate them once: ``code`` becomes the JSON error code and ``str(error)`` the
message shown to the user. Messages never contain file names or identifying metadata (they may name a
DICOM enumerated value such as a modality or a photometric interpretation).
"""

from __future__ import annotations


class ScanError(Exception):
    """Base class for a scan that cannot be read, cropped or classified."""

    code = "scan_error"


class EmptyFile(ScanError):
    code = "empty_file"


class FileTooLarge(ScanError):
    code = "file_too_large"


class UnsupportedFormat(ScanError):
    code = "unsupported_format"


class CorruptImage(ScanError):
    code = "corrupt_image"


class ImageTooLarge(ScanError):
    code = "image_too_large"


class ImageTooSmall(ScanError):
    code = "image_too_small"


class MultiFrameImage(ScanError):
    """A frame must be chosen (or does not exist); ``frames`` is how many the file holds, when known."""

    code = "multi_frame"

    def __init__(self, message: str, frames: int | None = None) -> None:
        super().__init__(message)
        self.frames = frames


class UnsupportedDicom(ScanError):
    code = "unsupported_dicom"


class NoPixelData(ScanError):
    code = "no_pixel_data"


class WrongModality(ScanError):
    code = "wrong_modality"


class WrongBodyPart(ScanError):
    code = "wrong_body_part"


class BurnedInText(ScanError):
    """The file says its pixels carry burnt-in text (patient details): never analysed, never kept."""

    code = "burned_in_annotation"


class NoBrainFound(ScanError):
    code = "no_brain_found"


class SeveralImages(NoBrainFound):
    """Several heads in one image (a multi-up export, a mosaic): the crop took the largest alone, and a tumour in
    another tile was judged "no tumour" with confidence."""

    code = "several_images"


class NoModelAnswer(ScanError):
    """The model's output for this image is not a number (a fault of the model, or an input it cannot read)."""

    code = "no_model_answer"


class ConfigError(ValueError):
    """A setting, the secrets file or a key file cannot be used; the message names which (never a secret)."""

    code = "bad_configuration"


class ModelError(Exception):
    """The model file or its card cannot be used (missing, hash mismatch, shape disagrees with the card)."""

    code = "model_error"


class StoreError(Exception):
    """The results database refused or failed an operation; the message is safe to show (no credentials)."""

    code = "store_error"


class WatchStateUnwritable(StoreError):
    """The PACS watch's state file cannot be written (a read-only or full data folder): the studies just handled
    are handled again by the next watch; ``lines``: what this watch did, said before the error."""

    code = "watch_state_unwritable"
    lines: tuple = ()

    def __init__(self, name: str, why: str) -> None:
        super().__init__(
            f"The watch's state file {name} in the data folder cannot be written ({why}): the studies handled since "
            "it was last written are handled again by the next watch. Free the disk or make the folder writable."
        )


class StoreUnavailable(StoreError):
    """The database cannot be reached (or is locked) right now; the caller may retry later."""

    code = "store_unavailable"


class UnauditedChange(StoreError):
    """A change was saved but its audit event could not be written after it (MongoDB writes the two one after the
    other); the message says so: pressing again would save it twice."""

    code = "unaudited_change"


class InvalidRecord(StoreError):
    """A record failed validation and was not written."""

    code = "invalid_record"


class ReviewedMeanwhile(InvalidRecord):
    """A review pressed against reviews another reader has added to since: not saved (compare-and-set)."""

    code = "reviewed_meanwhile"

    def __init__(
        self, message: str = "Another reader reviewed this result meanwhile; look at it again (nothing was saved)."
    ) -> None:
        super().__init__(message)


class AccessDenied(Exception):
    """The acting user's role does not allow the action (checked in the services, whatever the page shows)."""

    code = "forbidden"


class SignInFailed(Exception):
    """Wrong name or password, or a disabled account (one message for all: it must not tell which)."""

    code = "sign_in_failed"


class AccountLocked(SignInFailed):
    """Too many failed sign-ins: the account is locked for a while."""

    code = "account_locked"


class PacsError(Exception):
    """The PACS refused or failed a request; the message is safe to show (no credentials, no patient data)."""

    code = "pacs_error"


class PacsAnotherPatient(PacsError):
    """A series of the study is saved as another patient's result (the same images saved for them first): nothing
    of it is reviewed or reported from this study; trying again cannot help."""

    code = "another_patient"


class PacsAnotherStudy(PacsAnotherPatient):
    """A series of the study is saved as another study's result (the same images, a study filed twice): the same,
    for another study of the patient."""

    code = "another_study"


class PacsUnreachable(PacsError):
    """No answer from the PACS (wrong address, down, timed out); the caller may retry later."""

    code = "pacs_unreachable"


class PacsTimedOut(PacsUnreachable):
    """The PACS took a request and sent no answer in time: it is up, so a study every retrieval of which times out
    (too large to prepare in time, say) is tried a while and then left behind, not waited on for ever."""

    code = "pacs_timed_out"


class PacsRefused(PacsError):
    """The PACS refused the credentials or the request (HTTP 401/403)."""

    code = "pacs_refused"


class PacsForbidden(PacsRefused):
    """The PACS refused one request to this account (HTTP 403: it may read but not store, say); the watch tries a
    study so refused a few times, then leaves it behind."""

    code = "pacs_forbidden"


class PacsStudyChanged(PacsError):
    """The study's MR images in the PACS are not those that were analysed (a series added since the pull): a
    report made from the pull would replace a reading of the study as it is."""

    code = "study_changed"


class PacsMalformed(PacsError):
    """The PACS answered with something that is not the DICOMweb JSON or DICOM asked for."""

    code = "pacs_malformed"


class PacsAnswerTooLarge(PacsMalformed):
    """One answer of the PACS is larger, once decompressed, than the app reads (a part with no end, a compression
    bomb): refused while it arrives, before it fills the server's memory."""


class PacsReportRefused(PacsError):
    """The report could not be made from the study's headers (a value the standard or the report library refuses);
    sending it again cannot help."""

    code = "report_not_made"


class PacsQueryRefused(PacsError):
    """A search the app does not send as typed (a wildcard or a list in a patient ID would match other patients)."""

    code = "pacs_query_refused"


class PacsNotFound(PacsError):
    """The PACS has no such study (or no MR series in it)."""

    code = "pacs_not_found"


class PacsFeedWentBack(PacsError):
    """The PACS's change feed numbers its changes below those a watch has read (its database reset or restored, or
    the watch pointed at another PACS): an operator decides whether to read it from its first change."""

    code = "pacs_feed_went_back"


class WatchStateMissing(PacsError):
    """The PACS watch's state file is gone while this database's watch has run before (a restore from a backup
    without it, a deleted file): taken for a first start, the watch went through the PACS's whole history again."""

    code = "watch_state_missing"
