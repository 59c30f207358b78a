"""The key images that go back to the PACS beside the report: a Secondary Capture series per analysed series with
its sections at or above the threshold its verdict was judged by (the 12 most likely tumour when there are more),
the lesion outline (or the section alone) burned in; their UIDs derived from the study, the series, the reading and
the pixels sent (:mod:`core.pacs.objects` makes the report)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from core.model.volume import SeriesAnalysis
from core.pacs.objects import (
    MANUFACTURER,
    UTF8,
    dated_as,
    key_sections,
    quiet_highdicom,
    series_name,
    source_series,
    uid,
)


def key_images(evidence: Sequence[Any], series: SeriesAnalysis) -> list[Any]:
    """Secondary Capture images of the series' sections at or above the threshold the verdict was judged by, outline
    burned in."""
    import highdicom as hd

    quiet_highdicom()
    reference = next((e for e in evidence if str(e.SeriesInstanceUID) == source_series(evidence, series)), evidence[0])
    letters = series.volume.letters  # the displayed section's edges: rows run to "right", columns to "bottom"
    if not letters:  # a Secondary Capture in patient coordinates needs its orientation: none without the files'
        return []
    orientation = (letters["right"], letters["bottom"])  # an oblique edge has several letters ("LP"), as DICOM allows
    spacing = series.volume.spacing if series.volume.spacing and min(series.volume.spacing) > 0 else None  # as shown
    images = []
    for index in key_sections(series):
        pixels = np.ascontiguousarray(series.volume.sections[index])
        rgb = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
        analysis = series.sections[index].analysis
        if analysis is not None and analysis.lesion is not None:
            cv2.polylines(rgb, [c.reshape(-1, 1, 2) for c in analysis.lesion.outline], True, (255, 200, 0), 1)
        shown = (series.score, _digest(rgb), spacing)  # the picture as sent
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference,
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            pixel_spacing=spacing,  # without it a PACS drew 1 x 2 mm pixels square: a round lesion squashed 2:1
            patient_orientation=(orientation[0][0], orientation[1][0]),  # highdicom takes one letter an edge
            # one series a reading (its model and score): a second reading's images went into the first's series,
            # two sets under one name, a series re-read as "no tumour" keeping its old tumour key images
            series_instance_uid=uid(
                reference.StudyInstanceUID, series.volume.series, "key images", series.model_version, series.score
            ),
            series_number=9902,
            # what it shows is part of its identity: an outline added (a segmenter installed) under the UID of the
            # image without it was "sent" while the PACS kept the old picture; so is its spacing (sent without it)
            sop_instance_uid=uid(reference.StudyInstanceUID, series.volume.series, "key image", index, *shown),
            instance_number=index + 1,  # the section's number, as the app and the report count it
            manufacturer=MANUFACTURER,
        )
        image.copy_patient_and_study_information(reference)  # every identity qualifier the report keeps (the
        # issuer of the patient ID, of the accession number): an issuer-aware PACS filed them under another patient
        image.SpecificCharacterSet = UTF8
        dated_as(image, reference)
        image.BurnedInAnnotation = "NO"
        _name_source(image, series, index)  # an outline, no text: said, not left for a reader to guess
        image.PatientOrientation = list(orientation)  # every letter, as the app shows the edges
        name = series_name(evidence, series)  # its UID, cut to the field's 64 characters, read as another's
        source = "an unnamed series" if name.startswith("UID ") else name.split(" (UID ")[0]
        image.SeriesDescription = f"BTD key sections ({series.model_version}) of {source}"[:64]  # which reading, of
        # which series
        images.append(image)
    return images


def _name_source(image: Any, series: SeriesAnalysis, index: int) -> None:
    """The source image a key image was made from (SourceImageSequence, "source image for image processing
    operation"): its own instance number is the section's place in the app, not the source's, so a reader opening
    "image 1" of the source series looked at another section."""
    from pydicom.dataset import Dataset

    sources = series.volume.sources
    if index >= len(sources) or not sources[index][1]:
        return
    sop_class, sop_instance, frame = sources[index]
    reference, purpose = Dataset(), Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = sop_class, sop_instance
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    reference.PurposeOfReferenceCodeSequence = [purpose]
    image.SourceImageSequence = [reference]


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
