"""Study page: the files of one or more series (any names), a zip of a study, a multi-frame DICOM or a NIfTI
volume; the study's verdict first, then each series with its viewer and curve. Each series is saved once."""

import streamlit as st

from core.errors import InvalidRecord, ModelError, StoreError
from core.services import reports
from core.services.access import ANALYSE
from core.services.studies import NOT_SAVED, triage_study
from ui import resources
from ui.page import setup_page
from ui.viewer import series_panel, verdict_line
from ui.wording import count_of, pretty

actor = setup_page("Study", ANALYSE)
st.title("Study")
try:
    classifier, explainer = resources.current_classifier(), resources.current_explainer()
except ModelError as error:
    st.error(f"The model cannot be used: {error}")
    st.stop()
KEPT = 3  # studies a session keeps (each holds its sections at display size)
results = st.session_state.setdefault("studies", {})

try:
    key = resources.current_patient_key()
except ValueError as error:
    key = None
    st.error(f"Patient references are disabled: {error}.")
patient = st.text_input(
    "Patient reference (optional)",
    key="study_patient",
    disabled=key is None,
    help="Kept only as a keyed hash, never as typed; links this study to the patient's earlier results.",
)
files = st.file_uploader(
    "A study: DICOM files of one or more series (any names), a .zip of them, a multi-frame DICOM or a NIfTI volume "
    "(.nii, .nii.gz)",
    accept_multiple_files=True,
    key="study_files",
)
signature = tuple(sorted(f.file_id for f in files or []))
if files and signature not in results:  # a selection is analysed and saved once, when the reader says so
    st.caption(f"{len(files)} file(s) chosen; nothing is analysed or saved until you press Analyse.")
    if st.button("Analyse this study", type="primary", key="study_analyse"):
        try:
            store = resources.current_store()
        except StoreError as error:
            st.error(f"Results cannot be saved: {error}")
            store = None
        with st.spinner(f"Reading and analysing {len(files)} file(s)…"):
            results[signature] = triage_study(
                [f.getvalue() for f in files],
                classifier,
                store,
                actor=actor,
                patient_ref=resources.patient_reference(patient),
                images=resources.image_store(store),
                key=key,
            )
        for old in list(results)[:-KEPT]:
            results.pop(old)
        st.session_state["study_current"] = signature
        st.rerun()  # drawn again without the button and its "nothing is analysed" note
elif files:
    st.session_state["study_current"] = signature
current = st.session_state.get("study_current")
if current not in results:
    if not files:
        st.info(
            "Drop the files of a study, then press Analyse. Every series is read in geometric order, each "
            "section analysed, and the series judged by the rule in the model card."
        )
    st.stop()
if signature != current:
    st.caption(
        "Below: the study analysed earlier in this session."
        + (" The files now chosen are not analysed yet." if files else "")
    )
    if st.button("Clear this study from the page", key="study_clear"):
        st.session_state.pop("study_current", None)
        st.rerun()

study = results[current]
if study.error_code:
    st.error(f"This upload cannot be read as a study: {study.error_message}")
    st.stop()
verdict = {None: "No verdict", "tumour": "Tumour"}.get(study.verdict) or pretty(study.verdict)
st.metric("Study verdict", verdict, help="Tumour when any series is called tumour by the series rule.")
st.caption(
    f"{len(study.views)} series · model {classifier.card.name} {classifier.card.version} · "
    "a triage aid for a radiologist, not a diagnosis"
)
for note in study.notes:
    st.caption(note)
for number, view in enumerate(study.views, start=1):
    plane = (view.geometry.get("plane") or "unknown plane").capitalize()
    header = (
        f"Series {number} · {plane} · {count_of(len(view.sections), 'section')} · {pretty(view.label or 'no verdict')}"
    )
    with st.expander(header, expanded=number == 1 or view.is_tumour):
        st.markdown(verdict_line(view))
        for warning in view.warnings:
            st.warning(warning)
        if view.status is not None and view.status.state == NOT_SAVED:
            st.error(f"Not saved: {view.status.message}")
        elif view.status is not None:
            st.caption(f"Result {view.status.state}.")
        if view.skipped:
            st.caption(f"{count_of(len(view.skipped), 'section')} skipped (too little brain or not like a brain MRI).")
        series_panel(view, classifier, explainer, prefix=f"s{number}-{view.key[:8]}")

saved = [view.record.id for view in study.views if view.record is not None]
if saved and st.button(f"Make the PDF report of this study ({len(saved)} series)", key="study_report"):
    try:
        store = resources.current_store()
        st.session_state["study_pdf"] = (
            current,
            reports.study_report(store, resources.image_store(store), actor, saved, classifier, explainer),
        )
    except (InvalidRecord, StoreError) as error:
        st.error(f"The report cannot be made: {error}")
made = st.session_state.get("study_pdf")
if made and made[0] == current:
    st.download_button("Download the report (PDF)", made[1], "study-report.pdf", "application/pdf")
