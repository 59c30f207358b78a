"""A series as the viewer, the worklist, History and the report show it (:class:`SeriesView`): just analysed, or
reopened from the store with the pixels and the rule that made its verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from core.domain.results import Record
from core.errors import ScanError
from core.imaging.geometry import gap_starts, place_text
from core.imaging.scan import Scan
from core.imaging.volume import Volume
from core.model.analysis import Analysis, analyse_scan
from core.model.card import ModelCard
from core.model.classifier import Classifier
from core.model.decision import SeriesRule, rests_on
from core.model.explain import Explainer
from core.model.gate import NEEDS_REVIEW
from core.model.lesion import area_mm2, sections_spanned
from core.model.volume import SeriesAnalysis
from core.services.access import OPEN_RESULT, Actor, require
from core.services.triage import SaveStatus
from core.services.views import display_factors, displayed, scaled_outline
from core.storage.images import ImageStore
from core.storage.protocol import Store

SECTION_ORDER = "displayed normal"  # sections sorted along the displayed view's normal (round 3, session 12 on)


def geometry_of(volume: Volume) -> dict[str, Any]:
    """What a saved series keeps of its volume's geometry; its notes (a gap, a file left out...), so that a reopened
    series and its PDF say them as the page that analysed it did (their words name no patient); its scanner's
    series number, by which the reader finds it in their viewer and the PACS report names it."""
    return (
        {
            "spacing": list(volume.spacing) if volume.spacing else None,
            "thickness": volume.thickness,
            "orientation": list(volume.orientation) if volume.orientation else None,
            "plane": volume.plane,
            "source": volume.source,
            "positions_in_mm": volume.positions_in_mm,
            "section_order": SECTION_ORDER,
        }
        | ({"notes": list(volume.warnings)} if volume.warnings else {})
        | ({"dicom_series": volume.number} if volume.number is not None else {})
    )


def scanner_series(geometry: dict[str, Any] | None) -> str:
    """ " (DICOM series 3)" beside the page's own number of a series ("Series 1", in upload order), where the
    series came with a SeriesNumber: the PDF's "Series 2: sagittal" was DICOM series 5, and its series 2 another
    (the report sent to the PACS names series by that number)."""
    number = (geometry or {}).get("dicom_series")
    return f" (DICOM series {number})" if isinstance(number, int) and not isinstance(number, bool) else ""


def rule_of(rule: Any) -> dict[str, Any]:
    """The series rule that made a verdict, as the record keeps it (a later model may have another)."""
    return {"threshold": float(rule.threshold), "neighbours": int(rule.neighbours)}


def unstacked(pixels: np.ndarray, count: int) -> np.ndarray:
    if count < 1 or pixels.ndim != 2 or pixels.shape[0] % count:
        raise ValueError("the stored image is not a stack of this many sections")
    return pixels.reshape(count, pixels.shape[0] // count, pixels.shape[1])


def _stored_sections(record: Record, images: ImageStore | None) -> np.ndarray | None:
    """The de-identified sections of a saved series from the image store (None once purged or without a store)."""
    if images is None or record.image_key is None or record.section_count is None:
        return None
    data = images.get(record.image_key)
    if data is None:
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return None if pixels is None else unstacked(pixels, record.section_count)


# --- what a session keeps of a series ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SeriesView:
    """A series as the viewer shows it: the displayed sections (uint8, at most DISPLAY_SIDE a side), their
    geometry (spacing in displayed pixels), the curve, the verdict and, once saved, its record and status."""

    key: str
    sections: np.ndarray
    positions: tuple[float, ...]
    geometry: Mapping[str, Any]
    curve: tuple[float | None, ...]
    section_labels: tuple[str | None, ...]
    skipped: Mapping[int, str]
    label: str | None
    is_tumour: bool
    score: float | None
    threshold: float | None  # what the verdict was judged by; None for a series saved before rules were recorded
    neighbours: int | None  # by another model than the one served (its rule is not known)
    window: tuple[int, ...]
    probabilities: Mapping[str, float]
    model: str
    warnings: tuple[str, ...] = ()
    record: Record | None = None
    status: SaveStatus | None = None
    lesion_areas: tuple[int, ...] | None = None  # per section, in source pixels; None without a segmenter
    lesion_mm2: tuple[float, ...] | None = None  # per section; None without a segmenter or a pixel spacing
    lesion_ml: float | None = None  # None without a segmenter or a voxel size
    outlines: tuple[tuple[np.ndarray, ...], ...] | None = None  # per section: lesion contours on displayed pixels
    needs_review: bool = False  # the verdict rests on fewer neighbours than the rule's, or lies in the review band
    rule_threshold: float | None = None  # the rule's own (``threshold`` is higher when fewer neighbours were analysed)
    # the sections as the model read them, where the display stretches them square: a heat map is made from them
    # (one made from the display copy explained another input than the verdict's)
    read: np.ndarray | None = None

    @property
    def marked(self) -> list[int]:
        """Sections at or above the threshold the verdict was judged by."""
        if self.threshold is None:
            return []
        return [i for i, p in enumerate(self.curve) if p is not None and p >= self.threshold]

    def place(self, index: int) -> str:
        """Where section ``index`` lies along the series: millimetres along its normal with the patient direction
        they point to ("L 30.0 mm": a bare "-30.0 mm" on a sagittal series, measured along the view's normal, read
        as the wrong side), or its number in the files when they gave no positions."""
        if index >= len(self.positions):
            return "place unknown"
        position = self.positions[index]
        if not self.geometry.get("positions_in_mm", True):
            return f"file number {position:.0f}"
        if self.geometry.get("section_order") != SECTION_ORDER:  # saved before: its positions may run against its
            return f"{abs(position):.1f} mm, direction not known"  # orientation (H read as F, L as R)
        return place_text(self.geometry.get("orientation"), position)

    @property
    def lesion_span(self) -> tuple[int, int] | None:
        """The first and last section (0-based) with a lesion outlined, or None."""
        return None if self.lesion_areas is None else sections_spanned(self.lesion_areas)


def as_displayed(sections: np.ndarray, spacing: Sequence[float] | None) -> tuple[np.ndarray, list[float] | None]:
    """The sections as the viewer and the quick scroller draw them: square pixels (the coarser axis stretched when
    rows and columns are spaced unlike: 0.5 x 5 mm pixels were drawn ten times squashed, while the PDF drew them
    true) and at most :data:`DISPLAY_SIDE` a side; with the spacing of the displayed pixels."""
    rows_mm, columns_mm = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    fy, fx = display_factors(sections.shape[1:], spacing)  # a zero spacing (saved before it was refused): as stored
    if abs(fy - 1) < 1e-6 and abs(fx - 1) < 1e-6:
        return sections, list(spacing) if spacing else None
    shown = np.stack([displayed(section, spacing) for section in sections])
    ry, rx = sections.shape[1] / shown.shape[1], sections.shape[2] / shown.shape[2]
    return shown, [rows_mm * ry, columns_mm * rx] if spacing else None


def _stretched(spacing: Sequence[float] | None) -> bool:
    """Whether the display stretches the sections square (pixels spaced unlike in rows and columns): then what the
    model read is kept beside them for a heat map (a copy only shrunk shows the same anatomy, and a 1024 px series
    kept whole beside it held five times the memory)."""
    if not spacing or min(float(spacing[0]), float(spacing[1])) <= 0:
        return False
    return abs(float(spacing[0]) - float(spacing[1])) > 1e-6 * max(float(spacing[0]), float(spacing[1]))


def series_view(analysis: SeriesAnalysis, status: SaveStatus | None = None, record: Record | None = None) -> SeriesView:
    volume = analysis.volume
    sections, spacing = as_displayed(volume.sections, volume.spacing)
    geometry = geometry_of(volume) | {"spacing": spacing}
    areas = analysis.lesion_areas
    scale = np.array([sections.shape[2] / volume.sections.shape[2], sections.shape[1] / volume.sections.shape[1]])
    lesions = [s.analysis.lesion if s.analysis else None for s in analysis.sections]
    return SeriesView(
        key=volume.sha256,
        sections=sections,
        read=volume.sections if _stretched(volume.spacing) else None,
        positions=tuple(volume.positions),
        geometry=geometry,
        curve=tuple(analysis.curve),
        section_labels=tuple(None if s.analysis is None else s.analysis.prediction.label for s in analysis.sections),
        skipped={s.index: s.skipped or "" for s in analysis.refused},
        label=analysis.label,
        is_tumour=analysis.is_tumour,
        score=analysis.score,
        # the threshold the verdict was judged by (higher when fewer neighbours than the rule's were analysed): the
        # curve, the count above it and each section's side drawn at the rule's argued against the verdict shown
        threshold=analysis.applied_threshold,
        rule_threshold=float(analysis.rule.threshold),
        neighbours=analysis.rule.neighbours,
        window=tuple(s.index for s in analysis.window),
        probabilities=analysis.probabilities,
        model=f"{analysis.model_name} {analysis.model_version}",
        warnings=tuple(analysis.warnings),
        record=record,
        status=status,
        lesion_areas=None if areas is None else tuple(areas),
        lesion_mm2=None
        if areas is None or volume.spacing is None
        else tuple(area_mm2(a, volume.spacing) for a in areas),
        lesion_ml=analysis.lesion_ml,
        outlines=None if areas is None else tuple(scaled_outline(x.outline, scale) if x else () for x in lesions),
        # analysed again after a colleague reviewed it: the flag is done with, as on the Worklist and in the PDF
        needs_review=analysis.needs_review and not (record is not None and record.review_count),
    )


def stored_series_view(
    record: Record, store: Store, images: ImageStore | None, card: Any, actor: Actor
) -> SeriesView | None:
    """A saved series reopened (worklist, history, a report), for those who may open results: None once its pixels
    were purged. Its rule is the one saved with it; for a series saved before rules were kept, the served
    ``card``'s when the same model read it, else unknown (None): a rule of another model is never drawn on its
    curve."""
    require(actor, OPEN_RESULT)
    pixels = _stored_sections(record, images)
    if pixels is None:
        return None
    rows = store.sections_of(record.id)
    sections, spacing = as_displayed(pixels, record.geometry.get("spacing"))  # type: ignore[arg-type]
    rule: Any = record.geometry.get("rule")
    if rule is None and (record.model_name, record.model_version) == (card.name, card.version):
        rule = rule_of(card.series)
    curve = tuple(s.tumour_probability for s in rows)
    return SeriesView(
        key=record.id,
        sections=sections,
        read=pixels if _stretched(record.geometry.get("spacing")) else None,  # type: ignore[arg-type]
        positions=tuple(s.position for s in rows),
        geometry=dict(record.geometry) | {"spacing": spacing},
        curve=curve,
        section_labels=tuple(s.label for s in rows),
        skipped={s.index: s.skipped for s in rows if s.skipped},
        label=record.label,
        is_tumour=record.is_tumour,
        score=record.tumour_probability,
        threshold=None if rule is None else float(rule.get("applied", rule["threshold"])),
        rule_threshold=None if rule is None else float(rule["threshold"]),
        neighbours=None if rule is None else int(rule["neighbours"]),
        window=_deciding_window(curve, tuple(s.position for s in rows), rule),
        probabilities=dict(record.probabilities),
        model=f"{record.model_name} {record.model_version}",
        warnings=tuple(record.geometry.get("notes") or ()) + _few_neighbours(rule) + _legacy_order(record),
        record=record,
        needs_review=record.gate == NEEDS_REVIEW and not record.review_count,  # reviewed: done
    )


LEGACY_ORDER = (
    "saved by an earlier version, which did not keep which way its section positions run (NIfTI series, and DICOM "
    "files encoding a mirrored view, were stored against their orientation): sections are placed in mm without a "
    "direction; check the level and side by eye"
)


def _legacy_order(record: Record) -> tuple[str, ...]:
    """The warning of a series saved before sections were ordered along the displayed view's normal (no
    ``section_order``): its place texts name no direction (:meth:`SeriesView.place`)."""
    positions_in_mm = record.geometry.get("positions_in_mm", True)
    return () if record.geometry.get("section_order") == SECTION_ORDER or not positions_in_mm else (LEGACY_ORDER,)


def _few_neighbours(rule: dict[str, Any] | None) -> tuple[str, ...]:
    """What a fresh analysis says of a verdict resting on fewer neighbours than the rule asks, from the rule saved
    with it (the reopened series stated the rule's threshold alone, the PDF and the report sent the one applied)."""
    if not rule or rule.get("used") is None or rule["used"] >= rule.get("neighbours", 0):
        return ()
    return (rests_on(int(rule["used"]), int(rule["neighbours"]), float(rule["applied"])),)


def _deciding_window(
    curve: tuple[float | None, ...], positions: tuple[float, ...], rule: dict[str, Any] | None
) -> tuple[int, ...]:
    """The sections that set a stored series' score, found again by its rule (the viewer opens it at their middle,
    History's prior is shown there: the middle of the series was called "its deciding section")."""
    if rule is None:
        return ()
    breaks = gap_starts(positions)
    found = SeriesRule(int(rule["neighbours"]), float(rule["threshold"]))  # the window's size as the verdict used it
    return tuple(found.best_window(curve, breaks, size=int(rule["used"]) if rule.get("used") else None)[1])


def section_heat(view: SeriesView, index: int, classifier: Classifier, explainer: Explainer) -> np.ndarray | None:
    """Where the model looked on one displayed section (0..1, the section's shape); None when the section was
    skipped or has no head region, or when another model than the one served read the series (its heat map would
    not explain the verdict)."""
    card = classifier.card
    if index in view.skipped or view.model != f"{card.name} {card.version}":
        return None
    pixels = np.ascontiguousarray((view.sections if view.read is None else view.read)[index])
    try:
        analysis = analyse_scan(Scan(pixels, "volume", f"{view.key}:{index}", int(pixels.nbytes)), classifier)
    except ScanError:
        return None
    heat = explainer.explain(analysis, explained_label(view, analysis, card)).on_scan
    shown = view.sections[index].shape
    if heat.shape != shown:  # made on the pixels the model read, drawn on the displayed ones
        heat = cv2.resize(heat.astype(np.float32), (shown[1], shown[0]), interpolation=cv2.INTER_LINEAR)
    return heat


def explained_label(view: SeriesView, analysis: Analysis, card: ModelCard) -> str | None:
    """What a section's heat map explains: the series' call, not the section's own as a single scan (a section at
    0.40 under a rule at 0.30 decided "Glioma" and its map showed where the model looked for "No tumour"). A tumour
    series of uncertain type explains the section's most probable type; a series without a tumour, the section's
    own label (None: the explainer's default)."""
    if not view.is_tumour:
        return None
    if view.label in card.labels and view.label != card.negative_label:
        return view.label
    probabilities = analysis.prediction.probabilities
    return max((k for k in card.labels if k != card.negative_label), key=lambda k: probabilities[k])
