"""The Scan page's per-session memory: the uploads of this session and their results, kept across reruns and
across leaving the page and coming back (Streamlit forgets a widget's value once its page is left); and the batch
table's rows, in its words.

Only display-size views and small records are kept (:class:`core.services.triage.Triaged`); the uploaded bytes
only of multi-frame files, whose other frames may still be chosen. Nothing here is shared between sessions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.model.decision import cut
from core.model.gate import NEEDS_REVIEW, REJECTED
from core.services.triage import Triaged
from ui.wording import REFUSED_FLAG, pretty

STATE_KEY = "scan_batch"


@dataclass
class Upload:
    """One uploaded file: its name (shown in this session only), results per frame analysed, the chosen frame."""

    file_id: str
    name: str
    results: dict[int | None, Triaged] = field(default_factory=dict)
    frame: int | None = None  # the frame shown (multi-frame files)
    data: bytes | None = None  # kept for multi-frame files only
    patient: dict[str, str] | None = None  # who a DICOM file names (hashed, this session only): a batch of several
    # patients takes no reference

    @property
    def current(self) -> Triaged | None:
        return self.results.get(self.frame)

    @property
    def frames(self) -> int:
        return next(iter(self.results.values())).frames if self.results else 1


@dataclass
class Batch:
    """``seen``: the file ids the uploader widget last showed (a fresh widget after coming back to the page shows
    none, so a batch restored from this memory is not mistaken for files the user removed)."""

    uploads: dict[str, Upload] = field(default_factory=dict)  # by the uploader's file_id, in upload order
    patient_text: str = ""
    seen: set[str] = field(default_factory=set)
    generation: int = 0  # part of the uploader's key: a new generation is an empty uploader

    def __iter__(self) -> Iterator[Upload]:
        return iter(self.uploads.values())

    def __len__(self) -> int:
        return len(self.uploads)

    def uploader_changed(self, file_ids: Iterable[str]) -> None:
        """The uploader now shows ``file_ids``: forget the uploads the user removed from it (files still in flight
        are not in a widget value yet, and arrive on a later run: nothing is dropped for them)."""
        current = set(file_ids)
        for file_id in self.seen - current:
            self.uploads.pop(file_id, None)
        self.seen = current

    def clear(self) -> None:
        self.uploads.clear()
        self.seen = set()
        self.generation += 1

    @property
    def uploader_key(self) -> str:
        return f"uploads-{self.generation}"

    def results(self) -> Iterator[Triaged]:
        for upload in self:
            yield from upload.results.values()


def batch() -> Batch:
    """This session's batch (created on first use)."""
    return st.session_state.setdefault(STATE_KEY, Batch())


def result_state(result: Triaged) -> str:
    """What happened to one upload, in the words of the batch table."""
    if result.view is None:
        return "choose a frame" if result.needs_frame else "not read"  # its reason beside it ("rejected" read as
        # the gate's "refused", another outcome)
    decision = result.view.prediction.gate.decision
    reviewed = result.record is not None and result.record.review_count  # uploaded again after its review
    if decision == NEEDS_REVIEW and reviewed:
        return "reviewed since"  # the flag was answered (the page counted it "needs review" beside its final label)
    return {REJECTED: REFUSED_FLAG, NEEDS_REVIEW: "needs review"}.get(decision, "classified")


PERCENT_COLUMNS = ("tumour_probability", "confidence")


def on_screen(table: Any) -> Any:
    """The batch table as the page shows it: probabilities in percent held between 0.1 and 99.9 (the table read
    "1", certainty; as numbers, the columns still sort); the CSV keeps the values as computed."""
    shown = table.copy()
    for column in PERCENT_COLUMNS:
        if column in shown:
            shown[column] = cut(shown[column].to_numpy(float) * 100, 1).clip(0.1, 99.9)  # as the panel cuts it
    if "tumour" in shown:  # the decision in words: true and false beside "" made Arrow refuse the column (logged)
        shown["tumour"] = [
            {True: "yes", False: "no"}.get(v, "") if isinstance(v, bool) else "" for v in shown["tumour"]
        ]
    for column in ("final_label", "model_version", "reason", "verdict", "saved"):  # empty, not "None"
        if column in shown:
            shown[column] = shown[column].astype(object).where(shown[column].notna(), "")
    if "frame" in shown:  # a column of grey "None" for a batch of single images; a frame number where there is one
        frames = shown["frame"]
        shown["frame"] = [str(int(f)) if there else "" for f, there in zip(frames, frames.notna(), strict=True)]
        if frames.isna().all():
            shown = shown.drop(columns="frame")
    return shown


# the table's columns in words (the CSV keeps its field names)
COLUMN_NAMES = {"sha256": "image hash", "final_label": "final label", "model_version": "model"}


# every row's columns, in order, whatever became of its file: a batch whose first file could not be read had no
# final label column (the CSV took its columns from the first row, and dropped the radiologist's labels)
COLUMNS = (
    "scan", "file", "frame", "sha256", "result", "verdict", "final_label", "tumour", "tumour_probability",
    "confidence", "model_version", "saved", "reason",
)  # fmt: skip


def summary_row(index: int, name: str, result: Triaged) -> dict[str, Any]:
    """One row of the batch table and CSV (verdicts by their display names), with every one of :data:`COLUMNS`.
    ``name`` is the file name, shown in the session only: the caller leaves it out of the CSV unless the user asks
    for it (names can carry identities)."""
    row = _summary(index, name, result)
    return {column: row.get(column) for column in COLUMNS}


def _summary(index: int, name: str, result: Triaged) -> dict[str, Any]:
    row: dict[str, Any] = {"scan": index, "file": name, "frame": result.frame, "sha256": result.sha256[:12]}
    state = result_state(result)
    empty = {"verdict": None, "tumour": None, "tumour_probability": None, "confidence": None}
    saved = result.status.state if result.status else None
    if result.view is None:
        return {**row, "result": state, **empty, "model_version": None, "saved": saved, "reason": result.error_message}
    prediction = result.view.prediction
    record = result.record
    reviewed = pretty(record.final_label) if record is not None and record.review_count and record.final_label else None
    if state == REFUSED_FLAG:
        return {
            **row,
            "result": state,
            **empty,
            "final_label": reviewed,  # a radiologist's, as for a verdict (a refused scan's was left out)
            "model_version": prediction.model_version,
            "saved": saved,
            "reason": "; ".join(prediction.gate.reasons),
        }
    reasons = list(prediction.gate.reasons)
    if result.status is not None and result.status.message:
        reasons.append(result.status.message)
    return {
        **row,
        "result": state,
        "verdict": pretty(prediction.label),
        "final_label": reviewed,  # a radiologist's, when the result was reviewed before this upload
        "tumour": prediction.is_tumour,  # the decision itself, never read back from the wording
        # as computed (rounded to 4 places, 0.99995 read 1.0 in the CSV: a certainty the panel never states)
        "tumour_probability": float(prediction.tumour_probability),
        "confidence": float(prediction.confidence),
        "model_version": prediction.model_version,
        "saved": saved,
        "reason": "; ".join(reasons),
    }
