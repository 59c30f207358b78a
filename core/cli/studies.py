"""``study``: folders of DICOM files, zips, multi-frame DICOM or NIfTI files in, one JSON line per series out."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.cli.common import (
    EXIT_NOT_SAVED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    emit,
    error_json,
    not_opened,
    unwritable,
    write_new,
)
from core.errors import StoreError
from core.services.access import COMMAND_LINE
from core.services.resources import load_classifier, open_for_saving
from core.services.studies import NOT_SAVED, save_study_statuses
from core.services.study_reading import StudyOutcome, analyse_path, display_png


def cmd_study(args: argparse.Namespace) -> int:
    # checked before anything is analysed or saved (a file there, or a read-only folder, stopped the batch midway)
    if args.display_out and (refused := unwritable(Path(args.display_out), "folder")) is not None:
        emit(refused, sys.stdout)
        return EXIT_USAGE
    classifier = load_classifier(args.model)
    store, images, key = None, None, None
    if args.save:  # the database the app uses (MONGODB_URI, else BTD_DATA_DIR's SQLite file)
        try:
            store, images, key = open_for_saving()
        except (StoreError, ValueError) as error:
            return not_opened(error)
    status, unsaved = EXIT_OK, False
    seen: dict[str, Seen] = {}  # study -> the PATH its first series came from, and each series' verdict so far
    for name in _once(args.paths):
        outcome = analyse_path(Path(name), classifier)
        judged, note = whole_study(outcome, seen)
        done, not_saved = emit_outcome(name, outcome, args, (store, images, key), judged=judged, note=note)
        status, unsaved = max(status, done), unsaved or not_saved
    return EXIT_NOT_SAVED if unsaved else status


def _once(paths: list[str]) -> list[str]:
    """The PATHs, one given twice (the same file or folder however written) read once: its series were counted
    twice, and it was told to give a study in one PATH when it had."""
    seen: set[Path] = set()
    kept = []
    for name in paths:
        try:
            resolved = Path(name).resolve()
        except (OSError, RuntimeError):  # a link loop (Python 3.11 raises RuntimeError): read, and named unreadable
            resolved = Path(os.path.abspath(name))
        if resolved not in seen:
            seen.add(resolved)
            kept.append(name)
    return kept


@dataclass(frozen=True)
class Judged:
    """What a study's verdict needs of a series read from an earlier PATH (its pixels long gone)."""

    label: str | None
    is_tumour: bool
    negative_label: str
    needs_review: bool


@dataclass
class Seen:
    source: str
    series: list[Judged] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)


def whole_study(outcome: StudyOutcome, seen: dict[str, Seen]) -> tuple[StudyOutcome, str | None]:
    """The outcome whose study verdict the lines of ``outcome`` state, and a note: each PATH was judged as a study
    of its own, so a study given in two folders got two verdicts ("notumor" for its T1 folder, "tumour" for its
    FLAIR one). A PATH holding series of a study read from an earlier one states the verdict of all its series
    read so far, and says so; ``seen`` learns this outcome's series."""
    studies = {series.volume.study for series in outcome.series}
    if len(studies) != 1:  # nothing read, or refused as several studies
        return outcome, None
    (study,) = studies
    earlier = seen.get(study)
    record = seen.setdefault(study, Seen(outcome.source))
    record.series += [Judged(s.label, s.is_tumour, s.negative_label, s.needs_review) for s in outcome.series]
    record.unread += outcome.unread
    if earlier is None:
        return outcome, None
    note = (
        f"Series of this study were also read from {earlier.source}: the study verdict here is that of all its "
        "series read so far (the earlier PATH's lines stated its own series only); give a study in one PATH."
    )
    return StudyOutcome(outcome.source, tuple(record.series), unread=tuple(record.unread)), note  # type: ignore[arg-type]


def emit_outcome(
    name: str,
    outcome: StudyOutcome,
    args: argparse.Namespace,
    saving: tuple,
    extra: dict | None = None,
    saved: list | None = None,
    judged: StudyOutcome | None = None,
    note: str | None = None,
) -> tuple[int, bool]:
    """One JSON line per series of ``outcome`` (or one error line), saved when ``args.save`` (``saved``: the
    statuses of a save already made, one per series); returns the exit status it calls for and whether a save
    failed. ``extra`` goes into every line (the PACS study's UID); ``judged``: the outcome whose study verdict the
    lines state (default ``outcome``), with ``note`` among their warnings."""
    judged = judged or outcome
    if outcome.error_code:
        emit(
            {"source": name, **(extra or {}), **error_json(outcome.error_code, outcome.error_message or "")}, sys.stdout
        )
        return EXIT_REJECTED, False
    status, unsaved = EXIT_OK, False
    if args.save and saved is None:
        saved = save_outcome(outcome, saving)
    for number, series in enumerate(outcome.series):
        result = {"source": name, **(extra or {}), **series.to_json(), "study_verdict": judged.verdict}
        result["study_needs_review"] = judged.needs_review
        result["timings_ms"] = {"read": round(outcome.read_ms, 1), **result["timings_ms"]}
        result["timings_ms"]["total"] = round(outcome.read_ms + series.timings_ms["series"], 1)
        result["warnings"] = [*result["warnings"], *outcome.notes, *([note] if note else [])]
        if getattr(args, "display_out", None):
            letters, png = display_png(series.volume)
            try:  # a full disk midway: said on the series' line, never the end of a batch whose results are saved
                result["display"] = {
                    **letters,
                    "image": str(write_new(Path(args.display_out), series.volume.series[:16], ".png", png)),
                }
            except OSError as error:
                result["display"] = {**letters, "error": f"not written ({(error.strerror or 'error').lower()})"}
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
