"""A whole series: every section through the gate and the model in batches, then one verdict for the series.

Per-section verdicts are noisy along a head: sections at its ends hold little brain, and one odd section should
not make a tumour. The series rule (:class:`core.model.decision.SeriesRule`, stated in the model card's ``series``
entry and fitted on validation *volumes*, never on single slices, by :mod:`core.training.series_fit`) says:
**tumour when** ``k`` **neighbouring analysed sections all reach tumour probability** ``t``. Its score (shown as
the series' score, never as a tumour probability: a tumour series read 45.9 %) is the highest level that ``k``
neighbouring sections all reach (the best window's lowest section).

Sections the gate refuses (too little brain, not like a brain MRI) or without a head region are skipped with
their reason; they never count, and they break a run of neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from core.errors import NoBrainFound, ScanError
from core.imaging import Scan
from core.imaging.geometry import spacing_text
from core.imaging.volume import Volume
from core.model.analysis import Analysis, analyse_scans
from core.model.classifier import Classifier
from core.model.decision import UNKNOWN_TYPE, SeriesRule, decide, in_review_band, rests_on
from core.model.gate import REJECTED
from core.model.lesion import sections_spanned, volume_ml


@dataclass(frozen=True, eq=False)
class Section:
    """One section of a series: its analysis, or why it was skipped (``skipped`` is then a reason)."""

    index: int
    position: float
    analysis: Analysis | None
    skipped: str | None = None

    @property
    def tumour_probability(self) -> float | None:
        return None if self.analysis is None else self.analysis.prediction.tumour_probability


@dataclass(frozen=True, eq=False)
class SeriesAnalysis:
    volume: Volume
    sections: tuple[Section, ...]
    rule: SeriesRule
    score: float | None  # the series' score (see the module docstring); None when nothing analysed
    neighbours_used: int
    label: str | None  # the series verdict: the negative label, a tumour type or "tumour"; None: nothing analysed
    timings_ms: Mapping[str, float]
    model_name: str
    model_version: str
    negative_label: str = "notumor"
    review_band: tuple[float, float] = (0.0, 0.0)  # the card's review band for single scans
    single_threshold: float = 0.5  # the card's single-scan threshold: a verdict on fewer neighbours reaches it too

    @property
    def analysed(self) -> list[Section]:
        return [s for s in self.sections if s.analysis is not None]

    @property
    def refused(self) -> list[Section]:
        return [s for s in self.sections if s.analysis is None]

    @property
    def is_tumour(self) -> bool:
        return self.label is not None and self.label != self.negative_label

    @property
    def tumour_sections(self) -> list[int]:
        """Indices (0-based, in series order) of analysed sections at or above the threshold the verdict was judged
        by (:attr:`applied_threshold`), as the viewer and the PDF mark them."""
        threshold = self.applied_threshold
        return [s.index for s in self.analysed if (s.tumour_probability or 0.0) >= threshold]

    @property
    def window(self) -> list[Section]:
        """The neighbouring analysed sections that set the score (the best window; empty when nothing analysed)."""
        breaks = self.volume.gap_starts if self.volume is not None else ()
        return [self.sections[i] for i in self.rule.best_window(self.curve, breaks, self.single_threshold)[1]]

    @property
    def probabilities(self) -> dict[str, float]:
        """The per-class probabilities of the series: the mean over its best window (what a tumour type is
        named from); empty when nothing was analysed."""
        window = self.window
        if not window:
            return {}
        labels = list(window[0].analysis.prediction.probabilities)  # type: ignore[union-attr]
        rows = np.array([[s.analysis.prediction.probabilities[k] for k in labels] for s in window])  # type: ignore[union-attr]
        return {label: float(v) for label, v in zip(labels, rows.mean(axis=0), strict=True)}

    @property
    def curve(self) -> list[float | None]:
        return [s.tumour_probability for s in self.sections]

    @property
    def applied_threshold(self) -> float:
        """The threshold the verdict was judged by: the rule's, or higher when fewer neighbours than the rule asks
        were analysed (at least the single-scan threshold)."""
        return float(self.rule.threshold_for(self.neighbours_used, self.single_threshold))

    @property
    def warnings(self) -> list[str]:
        notes = list(self.volume.warnings)
        if self.label is not None and self.neighbours_used < self.rule.neighbours:
            full = self.rule.best_window(self.curve, self.volume.gap_starts if self.volume is not None else ())[1]
            why = (
                f"no {self.rule.neighbours} neighbouring sections could be analysed"
                if len(full) < self.rule.neighbours
                else f"no run of neighbouring analysed sections is longer than the rule's {self.rule.neighbours}, so "
                "its one window was a whole run (one normal end section would clear it)"
            )
            counted = f"(the series has {len(self.sections)}, {len(self.analysed)} analysed)"
            resting = rests_on(self.neighbours_used, self.rule.neighbours, self.applied_threshold)
            notes.append(f"{why} {counted}; {resting}")
        return notes + self.unjudged + self.volume_caveats

    @property
    def unjudged(self) -> list[str]:
        """What a "no tumour" verdict says of sections that reach its threshold outside the run it was judged on
        (never left unread); kept with the saved series, so that a reopened one and its report say it too."""
        judged = {s.index for s in self.window}
        above = [i for i in self.tumour_sections if i not in judged]
        if self.label is None or self.is_tumour or not above:
            return []
        shown = ", ".join(str(i + 1) for i in above[:8]) + (", ..." if len(above) > 8 else "")
        return [
            f"section{'s' * (len(above) > 1)} {shown} reach{'es' * (len(above) == 1)} the threshold "
            f"({self.applied_threshold:.2f}) outside the run the verdict was judged on: read "
            f"{'them' if len(above) > 1 else 'it'}"
        ]

    @property
    def volume_caveats(self) -> list[str]:
        """Why the lesion volume may be short or rough (:meth:`_volume_caveats`); empty without a lesion."""
        areas = self.lesion_areas
        span = sections_spanned(areas) if areas is not None else None
        return self._volume_caveats(span) if span is not None else []

    def _volume_caveats(self, span: tuple[int, int]) -> list[str]:
        """Why the lesion volume may be short or rough: sections inside its span or next to it not analysed, a gap
        in the files inside it or at its ends, a lesion reaching the series' first or last section (each: the lesion
        may go on there, a lower bound; one cut so at a follow-up read as shrinking), steps between sections that
        differ (the volume uses the median step), or a step the files declare without placing their sections."""
        notes, inside = [], f"(sections {span[0] + 1}-{span[1] + 1})"
        missing = [s.index for s in self.refused if span[0] - 1 <= s.index <= span[1] + 1]
        if missing:
            notes.append(
                f"{len(missing)} section(s) inside or next to the lesion's span {inside} could not be analysed: the "
                "lesion volume leaves them out and is a lower bound"
            )
        if any(span[0] <= k <= span[1] + 1 for k in self.volume.gap_starts):
            notes.append(
                f"a gap in the files lies inside or at the lesion's span {inside}: the volume is a lower bound"
            )
        ends = [name for name, k in (("first", 0), ("last", len(self.sections) - 1)) if k in span]
        if ends:
            notes.append(
                f"the lesion reaches the series' {' and '.join(ends)} section {inside}: it may go on beyond, and the "
                "volume is a lower bound"
            )
        steps = np.diff(self.volume.positions) if self.volume.positions_in_mm else np.array([])
        if steps.size and steps.min() > 0 and steps.max() > 1.1 * steps.min():
            notes.append(
                f"the sections are not evenly spaced ({steps.min():.1f} to {steps.max():.1f} mm): the lesion volume "
                "uses the median step and is approximate"
            )
        if not self.volume.positions_in_mm and len(self.sections) > 1:
            notes.append(
                "the files give no section positions: the step between sections is the one they declare (slice "
                "thickness or spacing), not measured, and the lesion volume is approximate"
            )
        return notes

    @property
    def needs_review(self) -> bool:
        """A series verdict goes to review first when it rests on fewer neighbours than the rule asks for, or when
        its score lies in the card's review band."""
        if self.score is None:
            return False
        return self.neighbours_used < self.rule.neighbours or bool(in_review_band(self.score, self.review_band))

    @property
    def lesion_areas(self) -> list[int] | None:
        """Each section's lesion area in pixels (0 where nothing was analysed); None without a segmenter."""
        analysed = [s.analysis for s in self.sections if s.analysis is not None]
        if not analysed or any(a.lesion is None for a in analysed):
            return None
        return [s.analysis.lesion.area_px if s.analysis and s.analysis.lesion else 0 for s in self.sections]

    @property
    def lesion_model(self) -> str | None:
        """The segmenter that measured the series' lesion ("name version"); None without one."""
        return next((s.analysis.lesion.by for s in self.sections if s.analysis and s.analysis.lesion), None)

    @property
    def lesion_ml(self) -> float | None:
        """The lesion volume in mL (areas x pixel spacing x distance between sections); None without a
        segmenter or a spacing."""
        areas = self.lesion_areas
        return None if areas is None else volume_ml(areas, self.volume.spacing, self.volume.step_mm)

    def to_json(self) -> dict[str, Any]:
        areas = self.lesion_areas
        lesion = {} if areas is None else {"lesion_ml": self.lesion_ml, "lesion_sections": sections_spanned(areas)}
        return lesion | {
            "study": self.volume.study,
            "series": self.volume.series,
            "dicom_series": self.volume.number,  # the scanner's SeriesNumber, as the app and the PACS report name it
            "plane": self.volume.plane,
            "slices": len(self.sections),
            "analysed": len(self.analysed),
            "refused": len(self.refused),
            "series_verdict": None if self.label is None else ("tumour" if self.is_tumour else self.label),
            "needs_review": self.needs_review,
            "label": self.label,
            "tumour_probability": None if self.score is None else round(self.score, 6),
            "tumour_slices": self.tumour_sections,
            # the threshold the verdict was judged by too (the rule's, or higher on fewer neighbours): what
            # tumour_slices are cut at
            "rule": self.rule.to_json()
            | {"neighbours_used": self.neighbours_used, "applied_threshold": round(self.applied_threshold, 6)},
            "curve": [None if p is None else round(p, 4) for p in self.curve],
            "skipped": {str(s.index): s.skipped for s in self.refused},
            "model": {"name": self.model_name, "version": self.model_version},
            "warnings": self.warnings,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


def sections_to_see(
    curve: Sequence[float | None],
    window: Sequence[int],
    count: int,
    among: Sequence[int] | None = None,
    called: bool = True,
) -> list[int]:
    """The sections a reader should see first, in series order: those of the deciding window (the sections that
    set the verdict; the likeliest ``count`` of a longer one), then, with room left, the likeliest others of
    ``among`` (default: every analysed section). The three likeliest sections anywhere were shown and outlined,
    isolated ones away from the sections the verdict rested on. A series not ``called`` tumour: its likeliest
    sections (its deciding window is the best run below the threshold: two sections over 0.99 in a shorter run
    were shown nowhere, in the viewer nor the PDF)."""

    def likeliest(indices: Sequence[int]) -> list[int]:
        return sorted((i for i in indices if curve[i] is not None), key=lambda i: -(curve[i] or 0.0))

    chosen = likeliest(window)[:count] if called else []
    pool = range(len(curve)) if among is None else among
    chosen += [i for i in likeliest(pool) if i not in chosen][: count - len(chosen)]
    return sorted(chosen)


def section_scan(volume: Volume, index: int) -> Scan:
    """Section ``index`` of a series as a :class:`Scan` (what the single-image pipeline takes)."""
    pixels = np.ascontiguousarray(volume.sections[index])
    spacing = {"PixelSpacing": spacing_text(volume.spacing)} if volume.spacing else {}
    return Scan(
        pixels=pixels,
        format=volume.modality.lower() or "volume",
        sha256=f"{volume.sha256}:{index}",
        size_bytes=int(pixels.nbytes),
        acquisition=MappingProxyType(spacing),
    )


def _clause(message: str) -> str:
    """A sentence of :mod:`core.model.roi` as the clause after "no head region: " (it read "no head region (No
    brain region found: the image is blank (a single uniform intensity).)")."""
    text = message.removeprefix("No brain region found: ").rstrip(".")
    return text[:1].lower() + text[1:]


# a section's reason worded for a section (the single image's advice, "upload each slice as its own image", was shown
# against a series' low section whose cerebellar hemispheres came apart)
SECTION_WHY = {"several_images": "two separate regions the size of a head; not read"}


def analyse_volume(volume: Volume, classifier: Classifier, batch_size: int = 64) -> SeriesAnalysis:
    """Every section through the gate and the model, then the card's series rule."""
    started = time.perf_counter()
    results = analyse_scans([section_scan(volume, i) for i in range(len(volume.sections))], classifier, batch_size)
    sections = []
    for index, (result, position) in enumerate(zip(results, volume.positions, strict=True)):
        if isinstance(result, ScanError):
            why = SECTION_WHY.get(result.code) or str(result)
            why = f"no head region: {_clause(why)}" if result.code == NoBrainFound.code else why
            sections.append(Section(index, position, None, why))
        elif result.prediction.gate.decision == REJECTED:
            sections.append(Section(index, position, None, "; ".join(result.prediction.gate.reasons)))
        else:
            sections.append(Section(index, position, result))
    analysed_done = time.perf_counter()
    card = classifier.card
    rule = card.series
    score, used = rule.score([s.tumour_probability for s in sections], volume.gap_starts, card.rule.threshold)  # runs
    # stop at a gap; a series too short for the rule is also judged on its best few sections (the card's short run)
    called = rule.calls(score, used, card.rule.threshold)
    label = None if score is None else (UNKNOWN_TYPE if called else card.negative_label)
    stages = dict.fromkeys(
        ("crop", "preprocess", "predict", "decide", *(("segment",) if classifier.segmenter else ())), 0.0
    )
    for result in results:
        if not isinstance(result, ScanError):
            for stage in stages:
                stages[stage] += result.prediction.timings_ms.get(stage, 0.0)
    timings = stages | {"series": (analysed_done - started) * 1000}
    result = SeriesAnalysis(
        volume=volume,
        sections=tuple(sections),
        rule=rule,
        score=score,
        neighbours_used=used,
        label=label,
        timings_ms=timings,
        model_name=card.name,
        model_version=card.version,
        negative_label=card.negative_label,
        review_band=tuple(card.rule.review_band),
        single_threshold=card.rule.threshold,
    )
    if label == UNKNOWN_TYPE:  # its type from the best window's mean, named when it stands out by the card's type
        # rule; the series rule called it tumour, so the single-scan threshold is not applied again (a window mean
        # under it left the type unnamed however clearly one stood out)
        mean = result.probabilities
        row = np.array([[mean[k] for k in card.labels]])
        typed = decide(row, card.labels, card.negative_label, 0.0, card.rule.subtype_min_share)[0]
        result = replace(result, label=typed)
    return result
