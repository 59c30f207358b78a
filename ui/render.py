"""Small render helpers: the three-column panel for one scan, drawn the same way for every upload."""

from __future__ import annotations

import cv2
import numpy as np
import streamlit as st

from core.charts import probabilities_figure
from core.gate import NEEDS_REVIEW, REJECTED
from core.triage import NOT_SAVED, SaveStatus, ScanOutcome

LABEL_NAMES = {
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "pituitary": "Pituitary tumour",
    "notumor": "No tumour",
    "tumour": "Tumour",
}


def pretty(label: str) -> str:
    return LABEL_NAMES.get(label, label)


def with_box(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The gray slice as RGB with the brain box drawn in (line width scales with the image)."""
    rgb = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    thickness = max(1, round(max(pixels.shape) / 200))
    x0, y0, x1, y1 = box
    cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 120), thickness)
    return rgb


def model_view(model_input: np.ndarray) -> np.ndarray:
    """The model's input tensor as an 8-bit image."""
    return (np.clip(model_input[:, :, 0], 0, 1) * 255).astype(np.uint8)


def scan_panel(index: int, outcome: ScanOutcome, status: SaveStatus | None, heat: np.ndarray | None) -> None:
    """Original with box | crop as the model sees it | where it looked | verdict, probabilities, save status.

    ``heat`` is the Grad-CAM overlay on the crop (RGB), or None when there is nothing to explain.
    """
    if outcome.analysis is None:
        st.error(f"Scan {index} (sha {outcome.sha256[:12]}) was not analysed: {outcome.error_message}")
        return
    analysis = outcome.analysis
    scan, prediction, gate = analysis.scan, analysis.prediction, analysis.prediction.gate
    original, crop, looked, verdict = st.columns([1, 1, 1, 1.3])
    original.image(
        with_box(scan.pixels, prediction.roi),
        caption=f"Scan {index} · {scan.format.upper()} {scan.width}×{scan.height} · brain region boxed",
        use_container_width=True,
    )
    side = analysis.model_input.shape[0]
    crop.image(model_view(analysis.model_input), caption=f"As the model sees it ({side} px)", use_container_width=True)
    with verdict:
        if gate is not None and gate.decision == REJECTED:
            st.error("Not a brain MRI slice the model can read: " + "; ".join(gate.reasons) + ". No verdict given.")
        else:
            if gate is not None and gate.decision == NEEDS_REVIEW:
                st.warning(f"Needs review: {'; '.join(gate.reasons)}.", icon=":material/rate_review:")
            st.metric(
                "Verdict",
                pretty(prediction.label),
                help="Tumour when the calibrated tumour probability reaches 50 %; then the most probable tumour type.",
            )
            st.markdown(
                f"Tumour probability **{prediction.tumour_probability:.1%}** · "
                f"model {prediction.model_name} {prediction.model_version}"
            )
            st.plotly_chart(
                probabilities_figure(prediction.probabilities, LABEL_NAMES),
                use_container_width=True,
                config={"displayModeBar": False},
                key=f"probabilities-{index}-{outcome.sha256[:12]}",
            )
        if status is not None and status.state == NOT_SAVED:
            st.warning(f"Not saved: {status.message}", icon=":material/warning:")
        elif status is not None:
            st.caption(f"Result {status.state}. Analysed in {prediction.timings_ms['total']:.0f} ms.")
    if heat is not None:
        looked.image(heat, caption="Where the model looked (Grad-CAM)", use_container_width=True)
    for warning in scan.warnings:
        st.warning(warning)
    if scan.acquisition:
        with st.expander("Acquisition (DICOM, non-identifying)"):
            st.table({"field": list(scan.acquisition), "value": list(scan.acquisition.values())})
