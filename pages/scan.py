"""Scan page: upload one scan or a batch; for each, the original, the brain crop and the verdict; saved once."""

from collections.abc import Callable

import pandas as pd
import streamlit as st

from core.errors import ModelError, StoreError
from core.services.access import ANALYSE
from core.services.triage import (
    NOT_SAVED,
    NOT_UPDATED,
    apply_patient_reference,
    batch_csv,
    patient_named,
    patients_differ,
    record_batch_export,
    retry_save,
    triage,
)
from ui import resources
from ui.auth import audited_download, callback_actor, fragment_actor
from ui.batch import COLUMN_NAMES, PERCENT_COLUMNS, Upload, batch, on_screen, summary_row
from ui.page import setup_page
from ui.render import scan_panel
from ui.wording import count_of

actor = setup_page("Scan", ANALYSE)
st.title("Scan triage")

try:
    classifier = resources.current_classifier()
    explainer = resources.current_explainer()
except ModelError as error:
    st.error(f"The model cannot be used: {error}")
    st.stop()

session = batch()  # this session's uploads and results, kept when the page is left and opened again


def open_store():
    try:
        return resources.current_store()
    except StoreError as error:
        st.error(f"Results cannot be saved: {error}")
        return None  # verdicts are still shown, marked "not saved"


def reference_changed() -> None:
    """A reference typed after uploading applies to this session's results that have none yet (in place, never a
    second record); results saved under another reference keep it until the reader moves them (below): typing the
    next patient's reference over the field moved the previous patient's results to the next one's History."""
    session.patient_text = st.session_state["patient_text"]
    _apply_reference(moving=False)
    st.session_state["reference_typed"] = True  # the field's fragment then redraws the page if results are kept


def move_references() -> None:
    """The reader's correction: this session's results saved under an earlier reference take the one typed now."""
    _apply_reference(moving=True)


def _apply_reference(moving: bool) -> None:
    current = callback_actor(ANALYSE)  # run before the page's own sign-in check: the session as it stands now
    if current is None:
        return
    reference = typed_reference(moving=moving)
    if reference is None:  # none typed, or never one over several patients' files (said on the page)
        return
    store = open_store()
    for upload in session:
        for frame, result in upload.results.items():
            if moving or result.record is None or result.record.patient_ref is None:
                upload.results[frame] = apply_patient_reference(result, store, reference, current)


def several_patients(*more: dict[str, str] | None, moving: bool = False) -> bool:
    """Whether the DICOM files the reference typed now would cover name more than one patient: ``more`` and this
    session's scans under that reference or under none (all of them, ``moving`` them onto it). Scans kept under
    an earlier reference are the earlier patient's: the next patient's, with the next reference typed, take it."""
    typed = resources.patient_reference(session.patient_text)
    covered = [
        upload.patient
        for upload in session
        if readable(upload)  # a file not read is saved under nobody: a CT of another patient dropped in kept the
        # reference from the patient's own scans
        and (moving or any(r.record is None or r.record.patient_ref in (None, typed) for r in upload.results.values()))
    ]
    return patients_differ([*covered, *more])


def readable(upload: Upload) -> bool:
    """Whether a file was read, or may yet be (a multi-frame file waiting for its frame: it names its patient)."""
    return upload.data is not None or any(r.view is not None or r.record is not None for r in upload.results.values())


def typed_reference(*more: dict[str, str] | None, moving: bool = False):
    """The reference typed, for the scans it covers (and files naming ``more`` patients): none when they name
    several patients (one reference filed three patients' slices under one, unsaid)."""
    return None if several_patients(*more, moving=moving) else resources.patient_reference(session.patient_text)


MIXED_PATIENTS = (
    "The DICOM files the patient reference typed would cover name more than one patient (their Patient IDs differ), "
    "so the scans of the batch that brought the second patient are saved without it (those saved under it before "
    "keep it). Type each patient's own reference before uploading their files (a reference typed now goes to the "
    "scans saved without one), or clear this session's results."
)


def elsewhere() -> int:
    """This session's results (saved or waiting for a retry) under a reference other than the one typed now (none
    when the field is empty or references are off); those kept under another session's patient are not counted
    (they stay where they are); none when moving them would put several patients under one reference."""
    reference = typed_reference(moving=True)
    if reference is None:
        return 0
    return len(  # results, not uploads: the same image uploaded twice is one result
        {
            result.record.id
            for result in session.results()
            if result.record is not None
            and result.record.patient_ref not in (None, reference)
            and not (result.status is not None and result.status.others)
        }
    )


def exported(store, result_ids: list[str], with_names: bool, rows: list[dict]) -> Callable[[], bytes]:
    """The CSV download, made when its button is pressed: its audit event (the results it carries, whether file
    names went with them) first; refused once the session has ended or the account may no longer analyse."""

    def make(current) -> bytes:
        record_batch_export(store, current, result_ids, with_names)
        return batch_csv(rows, with_names)

    return audited_download(store, actor, ANALYSE, make)


def clear_session() -> None:
    """A new batch starts from an empty reference too: a batch cleared for the next patient was filed under the
    previous one's."""
    session.clear()
    session.patient_text = ""
    st.session_state["patient_text"] = ""


def uploader_changed() -> None:
    session.uploader_changed(f.file_id for f in st.session_state.get(session.uploader_key) or [])


def choose_frame(upload: Upload, frame: int) -> None:
    """Analyse (and save) another frame, as the account stands now: the panel reruns alone, and the page run's
    actor could be one an admin has demoted since."""
    current = callback_actor(ANALYSE)
    if current is None:
        return
    if frame not in upload.results and upload.data is not None:
        store = open_store()
        # one file is one patient: a later frame takes the reference its earlier frames were analysed under (one
        # typed between two frames filed them under two patients)
        earlier = [r.record.patient_ref for r in upload.results.values() if r.record and r.record.patient_ref]
        reference = earlier[0] if earlier else typed_reference(upload.patient)
        upload.results[frame] = triage(
            upload.data,
            classifier,
            explainer,
            store,
            frame=frame,
            actor=current,
            patient_ref=reference,
            images=resources.image_store(store),
        )
    upload.frame = frame


def retry_unsaved() -> None:
    current = callback_actor(ANALYSE)  # run before the page's own sign-in check: the session as it stands now
    if current is None:
        return
    reference, store = typed_reference(), open_store()
    images = resources.image_store(store)
    for upload in session:
        for frame, result in upload.results.items():
            upload.results[frame] = retry_save(result, store, images, reference, current)


try:
    key = resources.current_patient_key()
except ValueError as error:
    key = None
    st.error(f"Patient references are disabled: {error}.")
if "patient_text" not in st.session_state:  # coming back to the page: the widget starts from what was typed
    st.session_state["patient_text"] = session.patient_text


@st.fragment
def patient_field() -> None:
    """A fragment: pressing Enter here re-runs only this field, so a file dropped at that moment is not reset by a
    whole-page re-run racing its upload (files vanished under load before). The results take the reference in
    the callback; the panels show it on the next page run."""
    fragment_actor()
    st.text_input(
        "Patient reference (optional)",
        key="patient_text",
        on_change=reference_changed,
        help="Kept only as a keyed hash, never as typed. Links this patient's scans without storing who they are. "
        "Typed after uploading, it is applied to the results saved without one; results saved under another "
        "reference keep theirs unless you move them.",
        disabled=key is None,
        placeholder="e.g. the local study number" if key else "Patient references need [identity] hmac_key in secrets",
    )
    # a correction that leaves earlier results under the reference typed before: the whole page, with the warning
    # and the Move button (drawn outside this fragment, they waited for some later page run)
    if st.session_state.pop("reference_typed", False) and elsewhere():
        st.rerun(scope="app")


patient_field()
moved = elsewhere()
if moved:
    st.warning(
        f"{count_of(moved, 'result')} of this session {'is' if moved == 1 else 'are'} kept under the patient "
        "reference typed before (saved, or to be saved by a retry). New scans take the reference typed now (another "
        "frame of an earlier file keeps that file's); the earlier ones keep theirs unless you move them (to correct a "
        "typing mistake)."
    )
    st.button(f"Move {count_of(moved, 'result')} to this reference", on_click=move_references, key="move_refs")
if session.uploader_key not in st.session_state:
    session.seen = set()  # a fresh uploader (first visit, or back from another page) shows no files yet
uploads = st.file_uploader(
    "MRI slices: PNG, JPEG or DICOM (any file name)",
    accept_multiple_files=True,
    key=session.uploader_key,
    on_change=uploader_changed,
    help="Each file is checked by its content, so DICOM files without an extension are fine. One slice per file; "
    "multi-frame DICOM files get a frame picker.",
)
new = [upload for upload in uploads or [] if upload.file_id not in session.uploads]
if new:
    store = open_store()
    named = {file.file_id: patient_named(file.getvalue()) for file in new}
    reference, images = typed_reference(*named.values()), resources.image_store(store)
    progress = st.progress(0.0, text="Analysing…") if len(new) > 1 else None
    for done, file in enumerate(new, start=1):
        # each file saved is an action of its own: an account disabled or demoted during a batch saved the rest
        if (actor := callback_actor(ANALYSE)) is None:  # type: ignore[assignment]
            st.rerun()  # the run that follows shows the sign-in form or the refusal
        data = file.getvalue()
        result = triage(data, classifier, explainer, store, actor=actor, patient_ref=reference, images=images)
        upload = Upload(
            file.file_id, file.name, {result.frame: result}, frame=result.frame, patient=named[file.file_id]
        )
        if result.frames > 1:  # keep the bytes for the frames the reader picks
            upload.data = data
        session.uploads[file.file_id] = upload
        if progress:
            progress.progress(done / len(new), text=f"Analysed {done} of {len(new)} scans")
    session.seen |= {file.file_id for file in uploads or []}
    if reference is None and session.patient_text.strip():  # withheld for files naming several patients: those
        _apply_reference(moving=False)  # not read name nobody's scans (one patient's left): it goes to them

if session.patient_text.strip() and several_patients():
    st.error(MIXED_PATIENTS, icon=":material/group:")
if not len(session):
    st.info("Drop one scan or a whole batch. Each is cropped to the brain and classified; results are saved once.")
    st.stop()
if not uploads:
    st.caption("These results are kept from earlier in this session.")

for index, upload in enumerate(session, start=1):
    scan_panel(index, upload, classifier.card.labels, choose_frame)
    st.divider()

rows = [
    summary_row(index, upload.name, upload.current)
    for index, upload in enumerate(session, start=1)
    if upload.current is not None
]
table = pd.DataFrame(rows)
st.subheader("Batch summary")
images = {(row["sha256"], row["frame"]): row for row in rows}  # the same image twice is one result: counted once
verdicts = [row for row in images.values() if row["verdict"] is not None]
tumours = sum(1 for row in verdicts if row["tumour"])
review = sum(1 for row in images.values() if row["result"] == "needs review")
distinct = len(images)
same = f" ({count_of(distinct, 'distinct image')}: the same image twice is one result)" if distinct < len(rows) else ""
st.caption(
    f"{count_of(len(rows), 'file')} received{same}; {len(verdicts)} with a verdict, {tumours} of them a tumour; "
    f"{review} {'needs' if review == 1 else 'need'} review. File names are shown here only: they are never saved."
)
mixed = sum(1 for u in session if u.current and u.current.status and u.current.status.another_patient)
if mixed:  # identical pixels under two patients: said above the table too, not only on each scan's panel
    st.warning(
        f"{count_of(mixed, 'scan')} of this batch {'is' if mixed == 1 else 'are'} already saved under another "
        "patient's reference (see each panel): check which patient each belongs to.",
        icon=":material/warning:",
    )
st.dataframe(
    on_screen(table),
    hide_index=True,
    width="stretch",
    column_config={
        **{
            name: st.column_config.NumberColumn(
                name.replace("_", " "),
                format="%.1f%%",
                help="In per cent, held between 0.1 and 99.9 so that the column sorts: 99.9 here is the panel's "
                ">99.9% (never a certainty); empty where there is no verdict.",
            )
            for name in PERCENT_COLUMNS
        },
        **{name: st.column_config.TextColumn(label) for name, label in COLUMN_NAMES.items()},
    },
)
left, middle, right = st.columns([1.2, 1, 1])
with_names = left.checkbox("Include file names in the CSV", help="File names can carry patient identities.")
try:  # a download is an audit event: without a database to record it in, none is offered
    export_store, unrecordable = resources.current_store(), None
except StoreError as error:
    export_store, unrecordable = None, f"Not now: the download cannot be recorded in the audit trail ({error})."
middle.download_button(
    "Download results (CSV)",
    b""
    if export_store is None
    else exported(
        export_store,
        list(  # the results the rows carry (each upload's frame shown, each result once), no other frame analysed
            dict.fromkeys(
                upload.current.record.id
                for upload in session
                if upload.current is not None
                and upload.current.record is not None
                and upload.current.status
                and upload.current.status.state != NOT_SAVED
            )
        ),
        with_names,
        rows,
    ),
    "scan-results.csv",
    "text/csv",
    disabled=export_store is None,
    help=unrecordable,
)
if any(result.status and result.status.state in (NOT_SAVED, NOT_UPDATED) for result in session.results()):
    right.button("Retry saving", on_click=retry_unsaved, type="primary")
st.button("Clear this session's results", on_click=clear_session, type="tertiary")
