"""The Study page's analysed studies, whatever their source (files dropped on the page, or a study pulled from the
PACS): the few a session keeps, which one is on the page, and how one is shown: the study's verdict first, then
each series with its viewer and curve, then the PDF report. One rendering path for every source."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import streamlit as st

from core.errors import InvalidRecord, StoreError
from core.services import reports
from core.services import studies as studies_service
from core.services.access import Actor
from core.services.report_text import reviewed_verdict
from core.services.series_views import scanner_series
from core.services.studies import NOT_SAVED, StudyResult
from core.services.triage import NOT_UPDATED
from ui import resources
from ui.auth import report_download
from ui.viewer import series_panel, verdict_line
from ui.wording import count_of, plain, pretty

KEPT = 3  # studies a session keeps (each holds its sections at display size)
CURRENT = "study_current"
LABELS = "study_labels"  # a PACS study's date and description and patient, by name


def studies() -> dict[Hashable, StudyResult]:
    """The studies analysed in this session, oldest first (an upload's name: its files' ids; a PACS study's:
    :func:`pacs_name`)."""
    return st.session_state.setdefault("studies", {})


def pacs_name(study_uid: str) -> tuple[str, str]:
    return ("pacs", study_uid)


def pacs_study_uid(name: Any) -> str | None:
    """The Study Instance UID of a PACS study's name; None for an upload."""
    return name[1] if isinstance(name, tuple) and len(name) == 2 and name[0] == "pacs" else None


def keep(name: Hashable, study: StudyResult) -> None:
    """Keep an analysed study (the oldest beyond :data:`KEPT` are forgotten) and put it on the page."""
    results = studies()
    results.pop(name, None)
    results[name] = study
    for old in list(results)[:-KEPT]:
        results.pop(old)
        st.session_state.get(LABELS, {}).pop(old, None)  # a PACS study's words (its patient's name) go with it
    st.session_state[CURRENT] = name


def current() -> Hashable | None:
    """The name of the study on the page (None when none, or when it was forgotten)."""
    name = st.session_state.get(CURRENT)
    return name if name in studies() else None


def earlier_note(name: Hashable, files_waiting: bool) -> str:
    """Why the study below is not the files now chosen, and which it is (a PACS study was never named: another
    study chosen in the picker, or another patient's refused, sat above another patient's verdict)."""
    label = st.session_state.get(LABELS, {}).get(name)
    source = f"from the PACS: {label}" if label else "from the PACS" if pacs_study_uid(name) else "analysed earlier"
    source += "" if pacs_study_uid(name) else " in this session"
    return f"Below: the study {source}." + (" The files now chosen are not analysed yet." if files_waiting else "")


def not_its_reference(name: Hashable, study: StudyResult, typed_now: str | None) -> bool:
    """Whether a reference is typed that is not the one the study's saved series are under (a PACS study's is the
    PACS patient ID's, whatever is typed). With no series saved, no: the report's own note says to retry saving."""
    saved = {v.record.patient_ref for v in study.views if v.record is not None}
    return bool(saved) and typed_now is not None and pacs_study_uid(name) is None and saved != {typed_now}


def filed_elsewhere(study: StudyResult) -> bool:
    """Whether a series of ``study`` is saved as another patient's result than the one it came with (the same images
    saved for them before): its PDF would be theirs (their reference, their reviews), and nothing of it goes to the
    PACS. Uploaded again with no reference typed, it is its own patient's, as saved."""
    return any(view.status is not None and view.status.another_patient for view in study.views)


ANOTHER_PATIENTS_PDF = (
    "No PDF report: a series of this study is saved as another patient's result (the same images saved for them "
    "before), so the report would be theirs. Check which patient the study belongs to."
)


def unsaved(study: StudyResult) -> bool:
    """Whether a series of ``study`` that has a verdict failed to save (a retry can save it)."""
    return any(view.status is not None and view.status.state == NOT_SAVED and view.label for view in study.views)


def show_study(
    actor: Actor,
    name: Hashable,
    study: StudyResult,
    classifier: Any,
    explainer: Any,
    actions: Callable[[], None] | None = None,
    report_note: str | None = None,
) -> None:
    """The study's verdict (then ``actions``, what its source offers: sending to the PACS), then each series (its
    verdict line, warnings, save state and viewer), then the PDF report of its saved series (``report_note``: why
    none is offered now)."""
    if study.error_code:
        st.error(f"This upload cannot be read as a study: {study.error_message}")
        return
    study = _as_it_stands(actor, study)
    verdict = _said(study.verdict)
    records = [view.record for view in study.views if view.record is not None]
    final = reviewed_verdict(records, others=study.unread + len(study.views) - len(records))
    if final is None:
        st.metric("Study verdict (model)", verdict, help="Tumour when any series is called tumour by the series rule.")
    else:  # reviewed: the radiologists' word leads, as in the PDF's headline (the model's led in large type)
        st.metric("Study verdict (radiologist's final label)", _said(final), help=f"Model verdict: {verdict}.")
        st.caption(f"Model verdict: {verdict}.")
    if any(view.needs_review for view in study.views):  # as the PDF, the PACS report and the command line say it
        st.warning("Flagged for review: read the series marked **needs review** first.", icon=":material/flag:")
    finals = [
        f"series {n}: {pretty(v.record.final_label)}"
        for n, v in enumerate(study.views, start=1)
        if v.record is not None and v.record.review_count and v.record.final_label
    ]
    if finals:  # the series' own final labels, beside the study's
        st.info(f"Reviewed by a radiologist since it was saved: {'; '.join(finals)}.", icon=":material/task_alt:")
    st.caption(
        f"{len(study.views)} series · model {classifier.card.name} {classifier.card.version} · "
        "a triage aid for a radiologist, not a diagnosis"
    )
    for note in study.notes:  # may quote a PACS's answer (a series number): shown as text, never as Markdown
        st.caption(plain(note))
    if actions is not None:
        actions()
    for number, view in enumerate(study.views, start=1):
        plane = (view.geometry.get("plane") or "unknown plane").capitalize()
        sections = count_of(len(view.sections), "section")
        shown = pretty(view.label or "no verdict")
        if view.record is not None and view.record.review_count and view.record.final_label:
            shown = f"final {pretty(view.record.final_label)} (model {shown})"  # the reader's word first
        header = f"Series {number}{scanner_series(view.geometry)} · {plane} · {sections} · {shown}"
        with st.expander(header, expanded=number == 1 or view.is_tumour):
            st.markdown(verdict_line(view))
            for warning in view.warnings:
                st.warning(warning)
            if view.status is not None and view.status.state == NOT_SAVED:
                st.error(f"Not saved: {view.status.message}")
            elif view.status is not None and view.status.state == NOT_UPDATED:
                st.warning(f"Saved, but {view.status.message}")
            elif view.status is not None and view.status.another_patient:  # a likely mix-up: no grey
                st.warning(f"Result {view.status.state}, but {view.status.message}.", icon=":material/warning:")
            elif view.status is not None:
                note = f": {view.status.message}" if view.status.message else ""
                st.caption(f"Result {view.status.state}{note}.")
            if view.skipped:  # why, as the scroller says it section by section (it read one guess for all)
                reasons = Counter(reason or "not read" for reason in view.skipped.values()).most_common()
                skipped = f"{count_of(len(view.skipped), 'section')} skipped"
                if len(reasons) == 1:
                    st.caption(f"{skipped}: {plain(reasons[0][0])}.")
                else:  # a list: one section's reason can hold several, joined by ";" (they read as one run)
                    more = [f"- {len(reasons) - 3} other reasons"] if len(reasons) > 3 else []
                    listed = (f"- {plain(why)} ({count_of(n, 'section')})" for why, n in reasons[:3])
                    st.caption("\n".join([f"{skipped}:", *listed, *more]))
                st.caption(SKIPPED_NOTE)
            series_panel(view, classifier, explainer, prefix=f"s{number}-{view.key[:8]}")
    if report_note is not None:
        st.caption(report_note)
    else:
        _report(actor, name, study, classifier, explainer)


# the gate refused ordinary upper-brain sections of a brain series as "another body part, a radiograph or a
# non-medical image": its reasons are worded for single images
SKIPPED_NOTE = (
    "A skipped section is not read by the model, and the series rule's neighbouring sections do not run across it. "
    "The input gate also refuses some ordinary sections of brain series, with reasons worded for other images "
    "(another body part): read skipped sections yourself."
)


REFERENCE_PENDING = (
    "No PDF report while the patient reference typed now is not this study's: link or move the study above, or "
    "clear the reference, then make it."
)


def _said(verdict: str | None) -> str:
    return {None: "No verdict", "tumour": "Tumour"}.get(verdict) or pretty(verdict or "")


def _as_it_stands(actor: Actor, study: StudyResult) -> StudyResult:
    """The study with its saved series' reviews as they stand (read on every run); as analysed when the database
    cannot be read now (said)."""
    if not any(view.record is not None for view in study.views):
        return study
    try:
        return studies_service.study_as_it_stands(resources.current_store(), actor, study)
    except StoreError as error:
        st.caption(f"Reviews since the analysis could not be read ({error}): the verdicts are as analysed.")
        return study


def _report(actor: Actor, name: Hashable, study: StudyResult, classifier: Any, explainer: Any) -> None:
    records = [view.record for view in study.views if view.record is not None]
    saved = [record.id for record in records]
    # a PDF made before a retry saved more series, a colleague's review, or a Link or Move (its header names the
    # reference it was made under) is not offered for them
    made_for = (name, tuple((r.id, r.review_count, r.final_label, r.patient_ref) for r in records))
    if unsaved(study):  # a report of the saved series alone could say "No tumour" of a study the page calls tumour
        st.caption("No PDF report yet: a series of this study is not saved. Retry saving above, then make it.")
        return
    if saved and st.button(f"Make the PDF report of this study ({len(saved)} series)", key="study_report"):
        try:
            store = resources.current_store()
            st.session_state["study_pdf"] = (
                made_for,
                reports.study_report(
                    store,
                    resources.image_store(store),
                    actor,
                    saved,
                    classifier,
                    explainer,
                    unread=study.unread,
                    numbers=[n for n, view in enumerate(study.views, start=1) if view.record is not None],
                ),
            )
        except (InvalidRecord, StoreError) as error:
            st.error(f"The report cannot be made: {error}")
    made = st.session_state.get("study_pdf")
    if made and made[0] == made_for:
        report_download(actor, made[1], reports.report_name(records))
