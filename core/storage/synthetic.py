"""Synthetic results, generated in code, for tests and benchmarks (no real scan or patient behind any of them)."""

from __future__ import annotations

from datetime import datetime

from core.domain.results import Record, record_id

LABELS = ("glioma", "meningioma", "notumor", "pituitary")


def synthetic_record(
    n: int,
    created_at: datetime,
    label: str = "glioma",
    version: str = "1.0.0",
    confidence: float = 0.9,
    patient: str | None = None,
    frame: int | None = None,
    uploader: str = "dr-test",
) -> Record:
    """Result number ``n`` (its image hash is ``n`` in hex), whose call has ``confidence``: the rest of the
    probability on the opposite call."""
    other = "glioma" if label == "notumor" else "notumor"
    probabilities = {name: 0.0 for name in LABELS} | {label: confidence, other: 1.0 - confidence}
    sha = f"{n:064x}"
    return Record(
        id=record_id(sha, "btd-cnn", version, frame),
        frame=frame,
        created_at=created_at,
        image_sha256=sha,
        image_format="png",
        image_width=512,
        image_height=512,
        image_bytes=12345,
        model_name="btd-cnn",
        model_version=version,
        label=label,
        probabilities=probabilities,
        tumour_probability=1.0 - probabilities["notumor"],
        is_tumour=label != "notumor",
        roi=(10, 20, 300, 400),
        timings_ms={"total": 12.5},
        patient_ref=patient,
        uploader=uploader,
    )
