"""PDF reports of a study (fpdf2): what the model said about each series, on A4 pages (about one a series).

The report holds the pseudonymous reference (a prefix of its keyed hash, never a name), the study's facts
(series, planes, sections, spacing), the study verdict and each series' verdict with the rule that made it, the
tumour-probability curve, key sections as read with their heat maps beneath, the lesion's stored volume and, when
a lesion segmenter is loaded, its outline on the key section (segmented again from the stored pixels), the model's
name, version, intended use and known limitations, and the reviewer's final label once a radiologist has reviewed
it. Producing one is an audit event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from core.domain.results import Record
from core.errors import InvalidRecord, NoBrainFound
from core.model.classifier import Classifier
from core.model.decision import ml_text, mm2_text, two_places
from core.model.explain import HEAT_MEANING, Explainer, overlay
from core.model.lesion import Lesion, Segmenter
from core.model.roi import find_brain
from core.model.volume import sections_to_see
from core.services import audit
from core.services.access import OPEN_RESULT, Actor, require
from core.services.report_drawing import curve, outlined, pdf_text, section_image
from core.services.report_text import (
    DEFAULT_LIMITATIONS,
    MIXED_PATIENTS,
    card_notes,
    series_lines,
    study_facts,
    study_headline,
    unread_names,
)
from core.services.series_views import SeriesView, scanner_series, section_heat, stored_series_view
from core.services.views import scaled_outline
from core.storage.images import ImageStore
from core.storage.protocol import Store

# a cell that ends its line, ragged right: fpdf2 justifies by default, and a long reviewer name (a sign-on e-mail)
# printed as "Reviewed by" with the page's width between the two words
_NEXT_LINE = {"new_x": "LMARGIN", "new_y": "NEXT", "align": "L"}


def key_sections(view: SeriesView, count: int = 3) -> list[int]:
    """The sections a reader should see first, in series order: those a tumour verdict rested on, the likeliest
    under another (the viewer opens at them: :func:`core.model.volume.sections_to_see`)."""
    return sections_to_see(view.curve, view.window, count, called=view.is_tumour)


def render(
    records: Sequence[Record],
    views: Sequence[SeriesView | None],
    reviews_by_record: dict[str, list],
    card_notes: dict,
    heat: dict[tuple[int, int], np.ndarray | None],
    author: str,
    now: datetime | None = None,
    lesions: dict[int, KeyLesion | None] | None = None,
    unread: int = 0,
    numbers: Sequence[int] | None = None,
) -> bytes:
    """The PDF of one study from its series' records and views (views None once the pixels were purged): the
    header with the study's facts, the study verdict, one section per series (``lesions``: series number -> its
    outlined key section; none given: no segmenter was loaded), and the model's intended use. ``numbers``: each
    series' number as the page showed it (default 1, 2, ...: a series with no verdict, never saved, shifted them)."""
    from fpdf import FPDF

    facts = study_facts(records, author, now or datetime.now(UTC))
    reference = f"patient reference {facts[0][1]} · study saved {facts[1][1]}"

    class Report(FPDF):
        def footer(self) -> None:
            """Every page names its study and its place (a page apart from the first named nothing: a separated
            page could not be matched to its patient)."""
            self.set_y(-12)
            self.set_font("Helvetica", size=7)
            self.cell(0, 5, pdf_text(f"Brain MRI triage report · {reference} · page {self.page_no()} of {{nb}}"))

    pdf = Report(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.set_title("Brain MRI triage report")
    pdf.set_creator("brain-mri-triage")
    pdf.add_page()
    _header(pdf, facts)
    _verdict(pdf, records, unread)
    for number, record, view in zip(numbers or range(1, len(records) + 1), records, views, strict=True):
        _series(pdf, number, record, view, list(reviews_by_record.get(record.id, [])), heat, lesions)
    _intended_use(pdf, card_notes)
    return bytes(pdf.output())


def _header(pdf, facts: list[tuple[str, str]]) -> None:
    """The title, the not-a-diagnosis line and the study's facts as two columns."""
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 8, pdf_text("Brain MRI triage report"), **_NEXT_LINE)
    pdf.set_font("Helvetica", size=8)
    pdf.cell(0, 4, pdf_text("Decision support for a radiologist - not a diagnosis."), **_NEXT_LINE)
    pdf.set_font("Helvetica", size=10)
    for name, value in facts:
        pdf.cell(62, 5.5, pdf_text(name))
        pdf.multi_cell(0, 5.5, pdf_text(value), **_NEXT_LINE)  # a long name wraps (it ran off the page)
    pdf.ln(2)


def _verdict(pdf, records: Sequence[Record], unread: int = 0) -> None:
    """The study verdict in large type (:func:`study_headline`)."""
    pdf.set_font("Helvetica", "B", 13)
    headline = study_headline(records, any(r.is_tumour for r in records), unread)
    pdf.multi_cell(0, 7, pdf_text(headline), **_NEXT_LINE)
    if named := unread_names(records):  # which: "1 series could not be analysed" named none to look for
        pdf.set_font("Helvetica", size=9)
        pdf.multi_cell(0, 4.5, pdf_text(f"Not analysed, read yourself: {named}"), **_NEXT_LINE)


@dataclass(frozen=True, eq=False)
class KeyLesion:
    """The lesion on one key section, segmented again for the report (None: no head region on it)."""

    index: int
    lesion: Lesion | None
    segmenter: str


def key_lesion(view: SeriesView, segmenter: Segmenter) -> KeyLesion | None:
    """The largest lesion of the key sections (the highest tumour probability among equals), each segmented inside
    its brain box from the pixels the model read (a stretched series' stored ones, else the displayed ones), its
    area in mm^2 with their spacing and its outline on the displayed section; None without key sections. (The key
    section was the most suspicious one alone: "No lesion found on this section" was printed beside the series'
    volume of a lesion on the next key section.)"""
    keys = key_sections(view)
    if not keys:
        return None
    shown = view.sections.shape[1:]
    read = view.sections if view.read is None else view.read
    scale = np.array([shown[1] / read.shape[2], shown[0] / read.shape[1]])  # (x, y): read pixels -> displayed ones
    spacing = view.geometry.get("spacing")  # the displayed pixels'
    found = []
    for index in keys:
        pixels = np.ascontiguousarray(read[index])
        try:
            box = find_brain(pixels).box
        except NoBrainFound:
            found.append(KeyLesion(index, None, segmenter.name))
            continue
        lesion = segmenter.lesion(pixels, box, (spacing[0] * scale[1], spacing[1] * scale[0]) if spacing else None)
        if view.read is not None:
            lesion = replace(lesion, outline=list(scaled_outline(lesion.outline, scale)))
        found.append(KeyLesion(index, lesion, segmenter.name))
    return max(found, key=lambda k: (k.lesion.area_px if k.lesion else -1, view.curve[k.index] or 0.0))


def key_lesion_lines(record: Record, view: SeriesView, key: KeyLesion) -> list[str]:
    """What the outlined key section shows, beside it."""
    lesion = key.lesion
    if lesion is None:
        found = "No head region found on it: nothing outlined"
    elif lesion.area_px == 0:
        found = "No lesion found on this section"
    else:
        mm2 = f"{mm2_text(lesion.area_mm2)} mm², " if lesion.area_mm2 is not None else ""
        found = f"Lesion on this section: {mm2}{lesion.area_px:,} px (outlined in magenta)"
    stored = f"{ml_text(record.lesion_ml)} mL" if record.lesion_ml is not None else "not known"
    if record.lesion_ml is not None:  # a lower bound is said where the volume is
        stored += "".join(f"; {note}" for note in (record.geometry or {}).get("lesion_caveats") or [])
    by = (record.geometry or {}).get("lesion_model")  # who measured the volume: the key section's may be another
    return [
        f"Key section {key.index + 1} of {len(view.curve)} (the largest lesion of the most suspicious sections; "
        f"P(tumour) {two_places(view.curve[key.index])})",
        found,
        f"Segmented again for this report by {key.segmenter}, from the stored section.",
        f"Series lesion volume (stored when it was saved{f', measured by {by}' if by else ''}): {stored}",
    ]


def _key_lesion(pdf, number: int, record: Record, view: SeriesView, key: KeyLesion | None, segmented: bool) -> None:
    """The key section with the lesion's outline and what it shows, under its series' number (alone at the top of a
    page it read as the next series'); without a segmenter, one line saying so."""
    if not segmented:
        pdf.set_font("Helvetica", size=8)
        note = "No lesion outline: no lesion segmenter is loaded (the stored volume is stated above)."
        pdf.multi_cell(0, 4, pdf_text(note), **_NEXT_LINE)
        return
    if key is None:  # no key section to outline
        return
    side = 60
    _room_for(pdf, side + 4)
    y = pdf.get_y()
    section_image(pdf, view, outlined(view.sections[key.index], key.lesion), pdf.l_margin, y, side)
    pdf.set_font("Helvetica", "B", 9)
    pdf.set_xy(pdf.l_margin + side + 5, y)
    pdf.cell(0, 5, pdf_text(f"Series {number}{scanner_series(record.geometry)}: lesion outline"), **_NEXT_LINE)
    pdf.set_font("Helvetica", size=8.5)
    for line in key_lesion_lines(record, view, key):
        pdf.set_x(pdf.l_margin + side + 5)
        pdf.multi_cell(0, 4.5, pdf_text(line), **_NEXT_LINE)
    pdf.set_y(y + side + 4)


def _series(
    pdf,
    number: int,
    record: Record,
    view: SeriesView | None,
    reviews: Sequence,
    heat: dict[tuple[int, int], np.ndarray | None],
    lesions: dict[int, KeyLesion | None] | None = None,
) -> None:
    """One series: its title and lines, then its curve, key sections and the lesion's outline on the key section
    (``lesions`` None: no segmenter is loaded), or a note once the images are gone."""
    plane = str((record.geometry or {}).get("plane") or "unknown plane")
    lines = series_lines(record, view, reviews)
    pdf.set_font("Helvetica", size=9)
    rows = sum(len(pdf.multi_cell(0, 4.5, pdf_text(line), dry_run=True, output="LINES")) for line in lines)
    maps = {index: heat.get((number, index)) for index in key_sections(view)} if view is not None else {}
    block = 37 + _key_rows_height(maps)  # the curve, the key sections, their heat maps and captions
    # the title with its curve and key sections on one page (they once began the next page under no title)
    _room_for(pdf, 7 + 4.5 * rows + (0 if view is None else block))
    pdf.set_font("Helvetica", "B", 11)
    title = f"Series {number}{scanner_series(record.geometry)}: {plane}, {_count(record.section_count or 0, 'section')}"
    pdf.cell(0, 7, pdf_text(title), **_NEXT_LINE)
    pdf.set_font("Helvetica", size=9)
    for line in lines:
        pdf.multi_cell(0, 4.5, pdf_text(line), **_NEXT_LINE)
    if view is None:
        pdf.multi_cell(0, 4.5, pdf_text("The series' images are no longer kept (retention period)."), **_NEXT_LINE)
        return
    _room_for(pdf, block)  # the curve and the key sections' rows, with their captions, on one page
    top = pdf.get_y() + 1
    curve(pdf, view, pdf.l_margin, top, 180, 28)
    pdf.set_y(top + 36)
    _key_section_images(pdf, view, maps)
    _key_lesion(pdf, number, record, view, (lesions or {}).get(number), lesions is not None)


KEY_SIDE = 55  # mm: a key section's box
CAPTION = 8  # mm under it: two lines (the section and its place, its probability)


def _room_for(pdf, height: float) -> None:
    """A new page unless ``height`` mm fit above the bottom margin (an image is drawn where it is put, past the
    page's end too; only text breaks the page)."""
    if pdf.get_y() + height > pdf.h - pdf.b_margin:
        pdf.add_page()


def _key_section_images(pdf, view: SeriesView, maps: dict[int, np.ndarray | None]) -> None:
    """The key sections side by side as read, captioned with P(tumour), and below each, smaller, the same section
    with its heat map when there is one (drawn over the only copy, the heat map hid the anatomy a reader checks the
    verdict against): the rows and their captions on one page (an image drawn past the bottom had its caption on
    the next page, beside another section)."""
    side, heated = KEY_SIDE, any(map_ is not None for map_ in maps.values())
    _room_for(pdf, _key_rows_height(maps))
    y = pdf.get_y()
    for k, index in enumerate(maps):
        section_image(pdf, view, np.repeat(view.sections[index][:, :, None], 3, axis=2), _column(pdf, k), y, side)
        pdf.set_xy(_column(pdf, k), y + side + 0.5)
        pdf.set_font("Helvetica", size=7)
        place = view.place(index)  # where it lies, as the viewer titles it: found again in the PACS by position
        caption = f"section {index + 1}, {place}\nP(tumour) {two_places(view.curve[index])}"
        pdf.multi_cell(side, 3, pdf_text(caption), align="L")
    pdf.set_y(y + side + CAPTION)
    if heated:
        y = pdf.get_y()
        for k, (index, map_) in enumerate(maps.items()):
            if map_ is not None:
                left = _column(pdf, k) + (side - HEAT_SIDE) / 2
                heated_section = overlay(view.sections[index], map_, 0.4)  # the directions: on the section above
                section_image(pdf, view, heated_section, left, y, HEAT_SIDE, directions=False)
        pdf.set_y(y + HEAT_SIDE + 1)
        pdf.set_font("Helvetica", size=7)
        pdf.multi_cell(0, 3, pdf_text(f"Below each section: its heat map. {HEAT_MEANING}"), **_NEXT_LINE)


HEAT_SIDE = 34  # mm: a key section's heat map, under it


def _key_rows_height(maps: dict[int, np.ndarray | None]) -> float:
    """The height (mm) of the key sections' row with its captions, and of their heat maps' when there are any."""
    return KEY_SIDE + CAPTION + (HEAT_SIDE + 8 if any(map_ is not None for map_ in maps.values()) else 0)


def _column(pdf, k: int) -> float:
    """Where the ``k``-th key section's box begins across the page (mm)."""
    return pdf.l_margin + k * (KEY_SIDE + 7)


def _intended_use(pdf, card_notes: dict) -> None:
    """The footer: the model card's intended use and known limitations (the defaults when it states none)."""
    pdf.set_font("Helvetica", "B", 10)
    title = "Intended use and known limitations"
    if model := card_notes.get("model"):  # a History report's older series were read by another version
        title += f" of {model}, the model in use when this report was made"
    pdf.multi_cell(0, 6, pdf_text(title), **_NEXT_LINE)
    pdf.set_font("Helvetica", size=8)
    for line in [card_notes.get("intended_use", ""), *card_notes.get("limitations", DEFAULT_LIMITATIONS)]:
        if line:
            pdf.multi_cell(0, 4, pdf_text(f"- {line}"), **_NEXT_LINE)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _reportable(store: Store, record_ids: Sequence[str]) -> list[Record]:
    """The saved series results ``record_ids``, refused unless they make one report: one patient, one reading."""
    records = [store.get(i) for i in record_ids]
    if not records or any(r is None or r.kind != "series" for r in records):
        raise InvalidRecord("A report is made of saved series results.")
    if len({r.patient_ref for r in records}) > 1:  # type: ignore[union-attr]  # a report names one patient
        raise InvalidRecord(MIXED_PATIENTS)
    # one reading: series read by two model versions were printed under the first one's model (the pages pass one;
    # the service no longer trusts them to). Not one study reference: a series saved before keeps the study it was
    # first saved under (its record is its pixels and model), and a study uploaded again with it is still one study
    if len({(r.model_name, r.model_version) for r in records}) > 1:  # type: ignore[union-attr]
        raise InvalidRecord("A report is of one reading: these series were read by different model versions.")
    return records  # type: ignore[return-value]


def _reviewed(store: Store, record_ids: Sequence[str]) -> tuple[list[Record], dict[str, list]]:
    """The results and their reviews as one state: the results checked again (a patient link moved meanwhile),
    then their reviews, the latest of which each result's verdict line states (a review saved between the two
    reads, or one whose summary a MongoDB timeout left unwritten, is in the body and the headline alike)."""
    records = _reportable(store, record_ids)
    reviews = {r.id: store.reviews_of(r.id) for r in records}
    return [_as_reviewed(r, reviews[r.id]) for r in records], reviews


def _as_reviewed(record: Record, reviews: Sequence) -> Record:
    if len(reviews) <= record.review_count:
        return record
    last = reviews[-1]
    return record.reviewed_as(last.reviewer, last.action, last.final_label, last.created_at, len(reviews))


def report_name(records: Sequence[Record]) -> str:
    """The PDF's file name: the pseudonymous reference's prefix and the time the study was saved, as its header
    gives them (every report downloaded was "study-report.pdf": a reader with several could not tell them apart)."""
    first = min(records, key=lambda record: record.created_at)
    reference = first.patient_ref[:12] if first.patient_ref else "no-reference"
    return f"study-report-{reference}-{first.created_at:%Y%m%d-%H%M}Z.pdf"


def study_report(
    store: Store,
    images: ImageStore | None,
    actor: Actor,
    record_ids: Sequence[str],
    classifier: Classifier,
    explainer: Explainer | None,
    unread: int = 0,
    numbers: Sequence[int] | None = None,
) -> bytes:
    """The PDF report of the series ``record_ids`` (one study), with heat maps when the shipped model made the
    verdicts and the lesion's outline on each key section when the classifier has a segmenter beside it; ``unread``:
    series of the study none of whose sections could be analysed (never saved; a report made later from History
    reads the count its series' records kept); ``numbers``: the series' numbers on the page that asks for it. An
    audit event names every result reported."""
    require(actor, OPEN_RESULT)
    records = _reportable(store, record_ids)
    views = [stored_series_view(r, store, images, classifier.card, actor) for r in records]  # type: ignore[arg-type]
    shown = list(numbers) if numbers is not None else list(range(1, len(records) + 1))
    if len(shown) != len(records):
        raise InvalidRecord("A report numbers each of its series once.")
    same_model = all(
        (r.model_name, r.model_version) == (classifier.card.name, classifier.card.version) for r in records
    )  # type: ignore[union-attr]
    heat: dict[tuple[int, int], np.ndarray | None] = {}
    if explainer is not None and same_model:
        for number, view in zip(shown, views, strict=True):
            for index in key_sections(view) if view is not None else []:
                heat[(number, index)] = section_heat(view, index, classifier, explainer)
    segmenter = classifier.segmenter
    lesions = None
    if segmenter is not None:
        lesions = {n: key_lesion(v, segmenter) for n, v in zip(shown, views, strict=True) if v is not None}
    records, reviews = _reviewed(store, record_ids)  # after the seconds above: a review saved meanwhile is in
    # the headline as well as in the body (read before them, the headline said "not yet reviewed: no tumour" above
    # a colleague's "final label Glioma")
    unread = max([unread, *(r.study_unread for r in records)])
    notes = card_notes(classifier)
    data = render(records, views, reviews, notes, heat, actor.name, lesions=lesions, unread=unread, numbers=shown)  # type: ignore[arg-type]
    with store.atomic():  # every result's event or none: a report that failed half-way is no event on SQLite
        for record_id in record_ids:
            audit.record(store, actor, "report", record_id)
    return data
