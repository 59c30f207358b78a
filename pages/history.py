"""History page: a patient's results and series over time with the lesion's size and its change, a series beside
an earlier one at the matching position with the change in tumour probability, and the PDF report of a study."""

import pandas as pd
import streamlit as st

from core.errors import InvalidRecord, ModelError, StoreError
from core.services import history, reports
from core.services.access import HISTORY
from core.services.series_views import scanner_series
from ui import resources
from ui.auth import report_download
from ui.lesion import lesion_change, lesion_size
from ui.opened import opened_result
from ui.page import setup_page
from ui.viewer import comparison, timeline
from ui.wording import SCORE_COLUMN, count_of, flag_shown, pretty, probability_shown, verdict_shown

actor = setup_page("History", HISTORY)
st.title("Patient history")
try:
    store = resources.current_store()
    classifier, explainer = resources.current_classifier(), resources.current_explainer()
except (StoreError, ModelError) as error:
    st.error(f"The history cannot be shown: {error}")
    st.stop()

typed = st.text_input("Patient reference", key="history_patient", help="Typed as on the Scan and Study pages.")
if not typed.strip():
    st.info("Type a patient reference to see every result saved under it.")
    st.stop()
reference = resources.patient_reference(typed)
if reference is None:
    st.error("Patient references are disabled on this installation (no key is configured).")
    st.stop()
seen_key = f"history-read-{reference}"  # the patient's results this session's audited reads showed
try:  # read afresh on every run (a study saved or a review made meanwhile shows); audited when it shows new results
    read = history.patient_history(store, actor, reference, seen=st.session_state.get(seen_key))
except StoreError as error:
    st.error(f"The history cannot be read right now: {error}")
    st.stop()
st.session_state[seen_key] = st.session_state.get(seen_key, set()) | {record.id for record in read.records}
records = read.records
if not records:
    st.info("No result is saved under this reference.")
    st.stop()
if read.earlier_left_out:
    st.warning(
        f"This patient has more than {history.LIMIT} saved results: the newest {history.LIMIT} are shown, and the "
        "oldest shown is not the first (a change is measured against the earliest study shown)."
    )


def bound(record, size) -> str:
    """ "≥ " before a volume that is a lower bound, "≈ " before an approximate one (as the report says them)."""
    caveats = " ".join((record.geometry or {}).get("lesion_caveats") or ())
    if size is None or not caveats:
        return ""
    return "≥ " if "lower bound" in caveats else "≈ "


days = history.days_from_first(records)  # a dated series' day from the first scan: never the date itself
scanned = history.scanned_days(records)  # every result dated: shown in the order of scanning
timeline([r for r in records if r.gate != "rejected"], scanned)  # a refused scan has no probability to plot
steps = dict(zip([r.id for r in records], history.lesion_course(records), strict=True))
shown = sorted(records, key=lambda r: (scanned[r.id], r.created_at)) if scanned else records
st.dataframe(
    pd.DataFrame(
        [
            {
                "saved (UTC)": f"{r.created_at:%Y-%m-%d %H:%M}",
                "scanned": f"day {days[r.id]}" if r.id in days else "",
                "kind": r.kind,
                "verdict": verdict_shown(r),
                "flag": flag_shown(r),  # as the Worklist, the Study page and the PDF flag it
                SCORE_COLUMN: probability_shown(r),
                "lesion": bound(r, step.size) + lesion_size(step.size, step.unit),
                "change": step.not_compared or lesion_change(step.change, step.unit, step.change_percent),
                "sections": str(r.section_count or ""),  # text: numbers beside "" made Arrow refuse the column
                "plane": (((r.geometry or {}).get("plane") or "") + scanner_series(r.geometry)).strip(),  # which
                "final label": pretty(r.final_label) if r.final_label else "",
            }
            for r, step in ((r, steps[r.id]) for r in shown)
        ]
    ),
    hide_index=True,
    width="stretch",
)
st.caption(
    "Lesion: a series' volume (mL) or a single scan's area (mm², or pixels without a pixel spacing), as the "
    "segmenter measured it. Change: a series' volume against the one series in the same plane of this patient's "
    "previous study; — when there is none or several (compare them below), when either volume is unknown, and for "
    "single scans (two slices are not the same section); no per cent of a prior under 1 mL (a false lesion or two). "
    "A volume agrees with a hand-drawn one only as well as the segmenter's card says: read a small change as "
    "none. "
    + (
        "Series are compared in the order they were scanned: scanned gives the days from this patient's first scan "
        "(their dates are not kept). "
        if history.dated(records)
        else "Series are compared in the order they were saved: some have no scan date (saved before dates were "
        "kept, or a NIfTI volume), so a prior study saved late reads as the later one, its change the other way "
        "round. "
    )
    + "The sequence (T1, T1 with contrast, T2, FLAIR) is not kept: check that two series are the same sequence "
    "before reading a change between them."
)

series = history.course_order(records)  # oldest first: scanned, where every series has its scan day, else saved
if not series:
    st.caption("No whole series saved for this patient: comparison and reports need series.")
    st.stop()


def describe(record) -> str:
    """A series as the pickers list it: unique (two sequences of one study saved in one minute read alike, and
    Streamlit kept the last of two equal labels: one could not be chosen), with the model that read it."""
    plane = ((record.geometry or {}).get("plane") or "unknown plane") + scanner_series(record.geometry)  # the
    # scanner's number tells two sequences of one study apart (the sequence itself is not kept)
    sections = count_of(record.section_count or 0, "section")
    read_by = f"{record.model_name} {record.model_version}"
    scanned = f"scanned day {days[record.id]} · " if record.id in days else ""
    return (
        f"{scanned}saved {record.created_at:%Y-%m-%d %H:%M} UTC · {plane} · {sections} · {verdict_of(record)} · "
        f"{read_by} · #{record.id[:6]}"
    )


def verdict_of(record) -> str:
    """The reader's final label first once reviewed (an override read as the model's call in the picker)."""
    if record.final_label:
        return f"final {pretty(record.final_label)} (model {verdict_shown(record)})"
    return verdict_shown(record)


st.subheader("Compare with a prior")
left, right = st.columns(2)
current = left.selectbox("Series", series[::-1], format_func=describe, key="history_current")
earlier = history.series_before(series, current)
# every other series can be chosen (where some have no scan date, a prior pulled from the PACS after today's study
# was saved later, and only earlier-saved ones were offered, so none); the default is the service's
candidates = history.prior_candidates(earlier, current)
choices = [r for r in series[::-1] if r.id != current.id]
best = history.default_prior(earlier, current)
prior = right.selectbox(
    "Prior (any other series of this patient)",
    choices,
    format_func=describe,
    key=f"history_prior-{current.id}",  # the default prior follows the series chosen (a kept value did not)
    placeholder="choose a series" if choices else "no other series saved",
    index=choices.index(best) if best is not None else None,
)


def opened(record_id: str):
    try:  # opening a result is an audit event, once while the session keeps it
        return opened_result(store, actor, record_id, classifier, explainer).series
    except (StoreError, InvalidRecord) as error:
        st.error(f"The series cannot be opened right now: {error}")
        st.stop()


if prior is None and len(candidates) > 1:
    st.info(
        f"The prior study has {len(candidates)} series in this plane (the sequence is not kept): choose the one of "
        "the same sequence as this series to compare them (their DICOM series numbers, in the PACS, tell which)."
    )
if prior is not None and prior.study_ref is not None and prior.study_ref == current.study_ref:
    st.warning(  # the default when the patient has no earlier study in this plane: said, never taken for a course
        "The prior is another series of the same study (another sequence of the same day): the comparison shows "
        "two sequences side by side, not a change over time."
    )
now_view = opened(current.id)
prior_view = opened(prior.id) if prior is not None else None
if now_view is None:
    st.info("The images of this series are no longer kept (retention period).")
else:
    for warning in now_view.warnings:  # what its reading said of it (a gap, a file left out, few neighbours)
        st.warning(warning)
    # a prior whose images are purged: said, and its series score compared all the same (it read "no prior chosen")
    comparison(now_view, prior_view, classifier, explainer, kept_prior=prior if prior_view is None else None)

st.subheader("Report")
whole = [r for r in series if r.study_ref is not None and r.study_ref == current.study_ref] or [current]
model = (current.model_name, current.model_version)  # one reading of the study: the chosen series' model's
study = [r for r in whole if (r.model_name, r.model_version) == model]
shown_as = [(r.geometry or {}).get("series_number") for r in study]  # as the Study page numbered them
numbered = None not in shown_as and len(set(shown_as)) == len(shown_as)
if numbered:
    study = [r for _, r in sorted(zip(shown_as, study, strict=True), key=lambda pair: pair[0])]
if len(study) < len(whole):  # the same study read again by another model: each series once, under one model
    st.caption(
        f"This study was also read by another model version; the report gives the reading by {model[0]} {model[1]} "
        "(choose a series read by the other one above for its report)."
    )
unread = max(r.study_unread for r in study)
named = f" ({names})" if (names := reports.unread_names(study)) else ""  # which, as the analysing page named them
if unread and not any(r.is_tumour for r in study):  # the study rule: a tumour series makes it a tumour study
    st.warning(
        f"{unread} series of this study could not be analysed when it was uploaded (not saved){named}: the study "
        "has no verdict from the model, whatever its saved series say. Read that series yourself."
    )
elif unread:
    st.warning(
        f"{unread} series of this study could not be analysed when it was uploaded (not saved){named}: read it too."
    )
# what the report says: a review or a series saved since it was made (read afresh on every run) takes its download
# away, so an old "not reviewed yet" PDF is never offered beside the final label
as_made = tuple((r.id, r.review_count, r.final_label) for r in study)
if st.button(f"Make the PDF report of this study ({len(study)} series)", key="history_report"):
    try:
        st.session_state["history_pdf"] = (
            as_made,
            reports.study_report(
                store,
                resources.image_store(store),
                actor,
                [r.id for r in study],
                classifier,
                explainer,
                numbers=sorted(shown_as) if numbered else None,
            ),
        )
    except (InvalidRecord, StoreError) as error:
        st.error(f"The report cannot be made: {error}")
made = st.session_state.get("history_pdf")
if made and made[0] == as_made:
    report_download(actor, made[1], reports.report_name(study))
