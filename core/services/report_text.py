"""What a study's report says, apart from how the PDF lays it out (:mod:`core.services.reports`): the header's
facts, the headline verdict, each series' lines and the lesion's, and the card's notes on intended use."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from core.domain.results import Record
from core.model.classifier import Classifier
from core.model.decision import (
    FEWER,
    NEEDS_REVIEW,
    NEGATIVE_LABEL,
    SERIES_SCORE,
    label_name,
    ml_text,
    percent,
    rests_on,
    review_reason,
)
from core.services.series_views import SeriesView

DEFAULT_LIMITATIONS = (
    "Decision support for a radiologist, not a diagnosis: every verdict is to be read with the images.",
    "Trained on 2-D slices of adult brain MRI; other body parts, children and post-operative heads were not seen.",
)


def study_facts(records: Sequence[Record], author: str, now: datetime) -> list[tuple[str, str]]:
    """The header's (name, value) rows: the pseudonymous reference (a prefix only), when the study was saved, how
    many series, the model, and who made the report when."""
    first = records[0]
    return [
        ("Patient reference (pseudonymous)", first.patient_ref[:12] if first.patient_ref else "none given"),
        ("Study saved", f"{min(r.created_at for r in records):%Y-%m-%d %H:%M} UTC"),
        ("Series", str(len(records))),
        ("Model", f"{first.model_name} {first.model_version}"),
        ("Report made", f"{now:%Y-%m-%d %H:%M} UTC by {author}"),
    ]


def series_lines(record: Record, view: SeriesView | None, reviews: Sequence) -> list[str]:
    """The lines under a series' title: the verdict (the radiologist's final label first once reviewed), the pixel
    spacing, the lesion's stored volume, the series rule (while the images are kept) and the last review."""
    spacing = (record.geometry or {}).get("spacing")
    model_line = f"{label_name(record.label)} (series score {percent(record.tumour_probability)}: {SERIES_SCORE})"
    lines = [
        f"Final label (radiologist): {label_name(record.final_label)}; model verdict: {model_line}"
        if record.final_label
        else f"Model verdict (not reviewed yet): {model_line}",
        f"Pixel spacing: {spacing[0]:.2f} x {spacing[1]:.2f} mm" if spacing else "Pixel spacing: not given",
        lesion_line(record),
        *(f"Note: {note}" for note in (record.geometry or {}).get("notes") or ()),  # as the screen said them
    ]
    rule = (record.geometry or {}).get("rule") or {}  # kept with the record: said once its images are purged too
    if view is not None and view.threshold is None:
        lines.append(f"Rule: that of {view.model}, not recorded with the verdict")
    elif view is not None or rule:
        neighbours, own = (view.neighbours, view.rule_threshold) if view else (rule["neighbours"], rule["threshold"])
        applied = view.threshold if view else rule.get("applied", own)
        own = own if own is not None else applied
        judged = "" if own == applied else f"; judged at {applied:.2f} (on {FEWER})"
        counted = f"; {len(view.marked)} sections at or above it; {len(view.skipped)} skipped" if view else ""
        lines.append(f"Rule: tumour when {neighbours} neighbouring sections reach {own:.2f}{judged}{counted}")
    fewer = rule.get("used") is not None and rule["used"] < rule.get("neighbours", 0)
    if fewer:
        note = rests_on(int(rule["used"]), int(rule["neighbours"]), float(rule["applied"]))
        lines.append(note[:1].upper() + note[1:])
    if record.gate == NEEDS_REVIEW:
        lines.append(f"Flagged for review ({_flag_reason(rule, view)})" + ("; reviewed below" if reviews else ""))
    if reviews:
        last = reviews[-1]
        lines.append(
            f"Reviewed by {last.reviewer} on {last.created_at:%Y-%m-%d %H:%M} UTC: final label "
            f"{label_name(last.final_label)} ({last.action})"
        )
    else:
        lines.append("Not reviewed by a radiologist yet.")
    return lines


def _flag_reason(rule: dict, view: SeriesView | None) -> str:
    """Why a series was flagged, as the screen says it: from the neighbours the verdict used (kept with the record,
    else the reopened view's window); a record older than either keeps both reasons (one named alone may be
    untrue)."""
    neighbours = rule.get("neighbours") or (view.neighbours if view is not None else None)
    used = rule.get("used") if rule.get("used") is not None else (len(view.window) if view and view.window else None)
    if used is None or neighbours is None:
        return "fewer neighbouring sections than the rule asks, or a score in the review band"
    return review_reason(int(used), int(neighbours))


def lesion_line(record: Record) -> str:
    """The series' lesion as the segmenter measured it when the series was saved: its volume, or its area in
    pixels when the voxel size is unknown, or that it was not measured."""
    caveats = "".join(f"; {note}" for note in (record.geometry or {}).get("lesion_caveats") or [])
    if record.lesion_ml is not None:  # a lower bound (sections not analysed, a gap) is said where the volume is
        volume = f"{ml_text(record.lesion_ml)} mL ({record.lesion_px or 0:,} px over its sections)"
        return f"Lesion volume (segmenter): {volume}{caveats}"
    if record.lesion_px is not None:
        return f"Lesion area (segmenter): {record.lesion_px:,} px over its sections; no volume (voxel size not known)"
    return "Lesion volume: not measured (no lesion segmenter when the series was saved)"


def reviewed_verdict(records: Sequence[Record], others: int = 0) -> str | None:
    """The study's verdict by its radiologists' final labels: "tumour" once a reviewed series is one (it makes the
    study one), "notumor" when every series is reviewed so and ``others`` (series not among ``records``: unread or
    not saved) is 0; else None, and the model's verdict stands."""
    reviewed = [r.final_label for r in records if r.final_label]
    if any(label != NEGATIVE_LABEL for label in reviewed):
        return "tumour"
    return NEGATIVE_LABEL if reviewed and len(reviewed) == len(records) and not others else None


def unread_names(records: Sequence[Record]) -> str:
    """The series of the study that could not be analysed, as the analysing page named them ("DICOM series 9:
    ..."), once each; "" when none was named (a series none of whose sections could be read has no name kept)."""
    return "; ".join(sorted({name for r in records for name in r.study_unread_named}))


def study_headline(records: Sequence[Record], model_tumour: bool, unread: int = 0) -> str:
    """The report's first verdict line: the radiologists' final labels when every series is reviewed, or when a
    reviewed one is a tumour (it makes the study one), with the model's verdict beside them; the model's verdict,
    marked as such, while any series is unreviewed and no reviewed one is a tumour. ``unread``
    series (none of their sections could be analysed, so never saved) leave the model no "No tumour" to give."""
    model = "Tumour" if model_tumour else ("no verdict" if unread else "No tumour")  # "none" read as none found
    if unread:
        model += f" ({unread} series of the study could not be analysed: read them yourself)"
    if any(r.gate == NEEDS_REVIEW and not r.final_label for r in records):  # as the PACS report says it
        model += " (flagged for review: read the series marked so first)"
    reviewed = [r for r in records if r.final_label]
    if reviewed and len(reviewed) == len(records):
        if reviewed_verdict(records) == NEGATIVE_LABEL and unread:  # the reviews cover the saved series, not the
            return f"Study: no verdict - the reviewed series are no tumour; model verdict: {model}"  # unread ones
        final = "Tumour" if reviewed_verdict(records) == "tumour" else "No tumour"
        return f"Study: {final} (radiologist's final label) - model verdict: {model}"
    if reviewed_verdict(records) == "tumour":  # one tumour series makes a tumour study: a reader's
        return (  # tumour is the study's, whatever the unreviewed series (the model's "No tumour" led in large type)
            f"Study: Tumour (radiologist's final label, {len(reviewed)} of {len(records)} series reviewed) - "
            f"model verdict: {model}"
        )
    if reviewed:
        return f"Study verdict (model): {model} - {len(reviewed)} of {len(records)} series reviewed, see below"
    return f"Study verdict (model, not yet reviewed): {model}"


MIXED_PATIENTS = (
    "The series of this study are filed under different patient references (one was linked to another patient "
    "before), so one report would name one patient for the other's series: make it from History, per patient."
)


def card_notes(classifier: Classifier) -> dict:
    """The card's intended use and limitations (the defaults when the card states none), with the model they are
    of: the one in use when the report is made, which may not be the one that read an older series."""
    path = classifier.card.path
    raw = json.loads(path.read_text()) if path is not None and path.exists() else {}
    return {
        "model": f"{classifier.card.name} {classifier.card.version}",
        "intended_use": raw.get("intended_use", ""),
        "limitations": raw.get("limitations", DEFAULT_LIMITATIONS),
    }
