"""Scan page: upload one scan or a batch; for each, the original, the brain crop and the verdict; saved once."""

import pandas as pd
import streamlit as st

from core.errors import ModelError, StoreError
from core.explain import overlay
from core.gate import REJECTED
from core.identity import pseudonymise
from core.triage import NOT_SAVED, analyse_upload, save, summary_row
from ui import resources
from ui.page import setup_page
from ui.render import model_view, pretty, scan_panel

setup_page("Scan")
st.title("Scan triage")

try:
    classifier = resources.current_classifier()
except ModelError as error:
    st.error(f"The model cannot be used: {error}")
    st.stop()

# Per-session memory (never shared between sessions): analyses and save outcomes keyed by upload and model.
analyses = st.session_state.setdefault("analyses", {})
saves = st.session_state.setdefault("saves", {})
heatmaps = st.session_state.setdefault("heatmaps", {})


def retry_unsaved() -> None:
    for key in [k for k, status in saves.items() if status.state == NOT_SAVED]:
        del saves[key]


try:
    key = resources.current_patient_key()
except ValueError as error:
    key = None
    st.error(f"Patient references are disabled: {error}.")
patient_text = st.text_input(
    "Patient reference (optional, enter before uploading)",
    help="Kept only as a keyed hash, never as typed. Links this patient's scans without storing who they are.",
    disabled=key is None,
    placeholder="e.g. the local study number" if key else "Patient references need [identity] hmac_key in secrets",
)
uploads = st.file_uploader(
    "MRI slices: PNG, JPEG or DICOM",
    type=["png", "jpg", "jpeg", "dcm", "dicom"],
    accept_multiple_files=True,
    help="Each file is checked by its content; one brain slice per file (choose a frame for DICOM volumes).",
)
explain_as = st.columns([1, 1, 2])
opacity = explain_as[0].slider("Heat map opacity", 0.0, 1.0, 0.45, 0.05)
explained_class = explain_as[1].selectbox(
    "Explain",
    ["predicted class", *classifier.card.labels],
    format_func=lambda x: x if x == "predicted class" else pretty(x),
)
if not uploads:
    st.info("Drop one scan or a whole batch. Each is cropped to the brain and classified; results are saved once.")
    st.stop()

try:
    store = resources.current_store()
except StoreError as error:
    store = None  # verdicts are still shown, marked "not saved"
    st.error(f"Results cannot be saved: {error}")
patient_ref = pseudonymise(patient_text, key) if key else None
uploader = st.user.get("email")  # None unless the deployment configures sign-in
model_tag = f"{classifier.card.name}:{classifier.card.version}"
progress = st.progress(0.0, text="Analysing…") if len(uploads) > 1 else None
rows = []
for index, upload in enumerate(uploads, start=1):
    data = upload.getvalue()
    cache_key = (upload.file_id, model_tag)
    if cache_key not in analyses:
        analyses[cache_key] = analyse_upload(data, classifier)
    outcome = analyses[cache_key]
    status = None
    save_key = (*cache_key, patient_ref)  # a reference typed later is a different record, saved when it is typed
    if outcome.analysis is not None:
        if save_key not in saves:
            saves[save_key] = save(
                outcome.analysis,
                store,
                patient_ref=patient_ref,
                uploader=uploader,
                negative_label=classifier.card.negative_label,
            )
        status = saves[save_key]
    heat = None
    if outcome.analysis is not None and outcome.analysis.prediction.gate.decision != REJECTED:
        label = outcome.analysis.prediction.label if explained_class == "predicted class" else explained_class
        heat_key = (*cache_key, label)
        if heat_key not in heatmaps:
            heatmaps[heat_key] = resources.current_explainer().explain(outcome.analysis, label).on_input
        heat = overlay(model_view(outcome.analysis.model_input), heatmaps[heat_key], opacity)
    scan_panel(index, outcome, status, heat)
    st.divider()
    rows.append(summary_row(index, outcome, status))
    if progress:
        progress.progress(index / len(uploads), text=f"Analysed {index} of {len(uploads)} scans")

# Forget removed uploads so a long session does not keep every image it has seen.
current = {upload.file_id for upload in uploads}
for memory in (analyses, saves, heatmaps):
    for stale in [k for k in memory if k[0] not in current]:  # every key starts with the upload's file_id
        del memory[stale]

table = pd.DataFrame(rows)
st.subheader("Batch summary")
with_verdict = sum(row["label"] is not None for row in rows)
tumours = sum(row["label"] not in (None, classifier.card.negative_label) for row in rows)
st.caption(f"{with_verdict} of {len(rows)} scans have a verdict; {tumours} of them a tumour.")
st.dataframe(table, hide_index=True, use_container_width=True)
left, right = st.columns(2)
left.download_button(
    "Download results (CSV)", table.to_csv(index=False).encode("utf-8"), "scan-results.csv", "text/csv"
)
if any(status.state == NOT_SAVED for status in saves.values()):
    right.button("Retry saving", on_click=retry_unsaved, type="primary")
