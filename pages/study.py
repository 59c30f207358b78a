"""Study page: the files of one or more series (any names), a zip of a study, a multi-frame DICOM or a NIfTI
volume, or (when a PACS is configured) a study pulled from the PACS; the study's verdict first, then each series
with its viewer and curve. Each series is saved once."""

import streamlit as st

from core.errors import ModelError, StoreError
from core.services.access import ANALYSE
from core.services.studies import SIGNED_OUT_CODE, link_study, needs_link, triage_study
from core.services.study_reading import upload_refusal
from ui import pacs, resources
from ui.auth import callback_actor
from ui.page import setup_page
from ui.study import (
    ANOTHER_PATIENTS_PDF,
    REFERENCE_PENDING,
    current,
    earlier_note,
    filed_elsewhere,
    keep,
    not_its_reference,
    pacs_study_uid,
    show_study,
    studies,
    unsaved,
)

actor = setup_page("Study", ANALYSE)
st.title("Study")
try:
    classifier, explainer = resources.current_classifier(), resources.current_explainer()
except ModelError as error:
    st.error(f"The model cannot be used: {error}")
    st.stop()
results = studies()

try:
    key = resources.current_patient_key()
except ValueError as error:
    key = None
    st.error(f"Patient references are disabled: {error}.")
from_pacs = pacs.settings() is not None
upload, pacs_tab = st.tabs(["Upload files", "From the PACS"]) if from_pacs else (st.container(), None)
with upload:
    patient = st.text_input(
        "Patient reference (optional)",
        key="study_patient",
        disabled=key is None,
        help="Kept only as a keyed hash, never as typed; links this study to the patient's earlier results.",
    )
    files = st.file_uploader(
        "A study: DICOM files of one or more series (any names), a .zip of them, a multi-frame DICOM or a NIfTI "
        "volume (.nii, .nii.gz)",
        accept_multiple_files=True,
        key="study_files",
    )
    signature = tuple(sorted(f.file_id for f in files or []))

    def analyse_and_save(patient_ref: str | None) -> None:
        """Analyse the chosen files and save each series once (a series saved before answers 'already saved')."""
        try:
            store = resources.current_store()
        except StoreError as error:
            st.error(f"Results cannot be saved: {error}")
            store = None
        refused = upload_refusal([f.size for f in files])
        if refused:  # from the sizes alone: nothing copied, nothing read
            st.error(f"Not analysed: {refused} Choose fewer files, or one series at a time.")
            return
        with st.spinner(f"Reading and analysing {len(files)} file(s)…"):
            study = triage_study(
                [f.getvalue() for f in files],
                classifier,
                store,
                actor=actor,
                patient_ref=patient_ref,
                images=resources.image_store(store),
                key=key,
                recheck=lambda: callback_actor(ANALYSE),  # the seconds of reading: a disabled account saves nothing
            )
            if study.error_code == SIGNED_OUT_CODE:  # not kept: the run that follows shows the sign-in form or the
                st.rerun()  # refusal, and the same files are offered again to an account that may analyse them
            results[signature] = study  # kept before any Streamlit call (session_state's included, so not by
            keep(signature, study)  # keep() alone): a rerun asked for meanwhile stops the script at the next one
        st.rerun()  # drawn again without the button and its "nothing is analysed" note

    failed = signature in results and results[signature].error_code == "internal_error"  # "try again": offered
    if files and (signature not in results or failed):  # a selection is analysed and saved once, when asked
        st.caption(f"{len(files)} file(s) chosen; nothing is analysed or saved until you press Analyse.")
        if st.button("Analyse this study", type="primary", key="study_analyse"):
            analyse_and_save(resources.patient_reference(patient))
    else:
        # a choice of files analysed before, or the page cleared of another study: the chosen files' is shown
        if files and (st.session_state.get("study_files_seen") != signature or current() is None):
            st.session_state["study_current"] = signature
        if files and unsaved(results[signature]):  # the database failed: the same files, saved now it is back
            st.warning("Some series of this study were not saved (see below).")
            if st.button("Retry saving (the files are analysed again)", type="primary", key="study_retry"):
                # under the reference its saved series have: one study, one patient, whatever was typed since
                saved = [v.record.patient_ref for v in results[signature].views if v.record is not None]
                analyse_and_save(saved[0] if saved else resources.patient_reference(patient))
    st.session_state["study_files_seen"] = signature
    if current() is None and not files:
        st.info(
            "Drop the files of a study, then press Analyse. Every series is read in geometric order, each "
            "section analysed, and the series judged by the rule in the model card."
        )
if pacs_tab is not None:
    with pacs_tab:
        pacs.pacs_panel(actor, classifier, key)
shown = current()
if shown is None:
    st.stop()
# a reference typed after the chosen files' study was analysed: linked when the reader says so (typed for the
# next patient before dropping their files, it would otherwise have linked this one), as an audited change
typed = resources.patient_reference(patient) if files and shown == signature else None
linkable = typed is not None and pacs_study_uid(shown) is None  # a PACS study's is the PACS patient ID's
if linkable and needs_link(results[shown], typed):
    st.warning(
        "The saved series of this study are not under the patient reference typed now (typed after it was analysed)."
    )
    if st.button("Link this study to the reference typed now", key="study_link"):
        try:
            results[shown] = link_study(resources.current_store(), actor, results[shown], typed)
        except StoreError as error:
            st.error(f"The patient reference was not applied: {error}")
        else:
            st.rerun()
elif linkable and needs_link(results[shown], typed, moving=True):
    st.warning(  # the reader's correction of a typing mistake (the Link button did nothing for these)
        "The saved series of this study are under the patient reference typed before. Move them only to correct a "
        "typing mistake: the study leaves that reference's History."
    )
    if st.button("Move this study's series to the reference typed now", key="study_move"):
        try:
            results[shown] = link_study(resources.current_store(), actor, results[shown], typed, moving=True)
        except StoreError as error:
            st.error(f"The patient reference was not applied: {error}")
        else:
            st.rerun()


if signature != shown:
    st.caption(earlier_note(shown, bool(files) and signature not in results))
    if st.button("Clear this study from the page", key="study_clear"):
        st.session_state.pop("study_current", None)
        st.rerun()
show_study(
    actor,
    shown,
    results[shown],
    classifier,
    explainer,
    lambda: pacs.send_panel(actor, shown, classifier, key),
    # its PDF (the patient named by a hash only) was offered under the next patient's reference, typed meanwhile
    # (with their files chosen, not yet analysed, too)
    # and one whose images were saved for another patient would be that patient's report
    report_note=ANOTHER_PATIENTS_PDF
    if filed_elsewhere(results[shown])
    else (
        REFERENCE_PENDING if not_its_reference(shown, results[shown], resources.patient_reference(patient)) else None
    ),
)
