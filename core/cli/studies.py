"""``study``: folders of DICOM files, zips, multi-frame DICOM or NIfTI files in, one JSON line per series out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.common import EXIT_NOT_SAVED, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, emit, error_json, write_new
from core.config import file_secrets, mongodb_uri, patient_key
from core.errors import StoreError
from core.services.access import COMMAND_LINE
from core.services.resources import load_classifier, open_image_store, open_results_store
from core.services.studies import NOT_SAVED, save_study_statuses
from core.services.study_reading import StudyOutcome, analyse_path, display_png


def cmd_study(args: argparse.Namespace) -> int:
    if args.display_out:  # checked before anything is analysed or saved (a file there stopped the batch midway)
        try:
            Path(args.display_out).mkdir(parents=True, exist_ok=True)
        except OSError:
            emit(error_json("unwritable", f"The folder {args.display_out} cannot be created."), sys.stdout)
            return EXIT_USAGE
    classifier = load_classifier(args.model)
    store, images, key = None, None, None
    if args.save:  # the database the app uses (MONGODB_URI, else BTD_DATA_DIR's SQLite file)
        try:
            store = open_results_store(existing=True)  # a mistyped folder is no new database
            images = open_image_store(store)
            key = patient_key(file_secrets(), shared_database=bool(mongodb_uri(file_secrets())))
        except (StoreError, ValueError) as error:
            emit(error_json(getattr(error, "code", "bad_configuration"), str(error)), sys.stdout)
            return EXIT_USAGE
    status, unsaved = EXIT_OK, False
    read_from: dict[str, str] = {}  # study -> the PATH its series came from
    for name in args.paths:
        outcome = one_study(analyse_path(Path(name), classifier), read_from)
        done, not_saved = emit_outcome(name, outcome, args, (store, images, key))
        status, unsaved = max(status, done), unsaved or not_saved
    return EXIT_NOT_SAVED if unsaved else status


def one_study(outcome: StudyOutcome, read_from: dict[str, str]) -> StudyOutcome:
    """``outcome``, or a refusal when its study's series were read from an earlier PATH of this run: each PATH is
    judged as one study, and a study given in two folders got two study verdicts (no tumour for its T1 folder,
    tumour for its FLAIR folder). ``read_from`` learns the studies of an outcome it lets through."""
    studies = {series.volume.study for series in outcome.series}
    earlier = next((read_from[study] for study in studies if study in read_from), None)
    if earlier is not None:
        message = (
            f"Series of this study were already read from {earlier}, and each PATH is judged as one whole study: "
            "give all of a study's series in one folder or zip (the study verdict printed for the earlier PATH "
            "covers its own series only)."
        )
        return StudyOutcome(outcome.source, error_code="study_split", error_message=message)
    read_from.update(dict.fromkeys(studies, outcome.source))
    return outcome


def emit_outcome(
    name: str,
    outcome: StudyOutcome,
    args: argparse.Namespace,
    saving: tuple,
    extra: dict | None = None,
    saved: list | None = None,
) -> tuple[int, bool]:
    """One JSON line per series of ``outcome`` (or one error line), saved when ``args.save`` (``saved``: the
    statuses of a save already made, one per series); returns the exit status it calls for and whether a save
    failed. ``extra`` goes into every line (the PACS study's UID)."""
    if outcome.error_code:
        emit(
            {"source": name, **(extra or {}), **error_json(outcome.error_code, outcome.error_message or "")}, sys.stdout
        )
        return EXIT_REJECTED, False
    status, unsaved = EXIT_OK, False
    if args.save and saved is None:
        saved = save_outcome(outcome, saving)
    for number, series in enumerate(outcome.series):
        result = {"source": name, **(extra or {}), **series.to_json(), "study_verdict": outcome.verdict}
        result["study_needs_review"] = outcome.needs_review
        result["timings_ms"] = {"read": round(outcome.read_ms, 1), **result["timings_ms"]}
        result["timings_ms"]["total"] = round(outcome.read_ms + series.timings_ms["series"], 1)
        result["warnings"] = [*result["warnings"], *outcome.notes]
        if getattr(args, "display_out", None):
            letters, png = display_png(series.volume)
            out = write_new(Path(args.display_out), series.volume.series[:16], ".png", png)
            result["display"] = {**letters, "image": str(out)}
        if series.label is None:
            result |= error_json(
                "no_brain_sections",
                "No section of this series could be analysed: "
                + "; ".join(sorted(set(result["skipped"].values())))[:500],
            )
            status = EXIT_REJECTED
        if args.save:
            status_of = saved[number]
            result["saved"] = status_of.state + (f": {status_of.message}" if status_of.message else "")
            # a series without a verdict has nothing to save: a rejection (1), not a database failure (3)
            unsaved = unsaved or (status_of.state == NOT_SAVED and series.label is not None)
        emit(result, sys.stdout)
    for reason in outcome.unread:  # a series that could not be put together: a line of its own, and a rejection
        emit({"source": name, **(extra or {}), **error_json("series_unread", reason)}, sys.stdout)
        status = EXIT_REJECTED
    return status, unsaved


def save_outcome(outcome: StudyOutcome, saving: tuple, patient_ref: str | None = None) -> list:
    """Save the series of ``outcome`` as the command line does (uploader ``cli``): one status per series."""
    store, images, key = saving
    return save_study_statuses(outcome, store, actor=COMMAND_LINE, patient_ref=patient_ref, images=images, key=key)
