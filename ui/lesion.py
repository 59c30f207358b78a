"""How the lesion segmenter's outline and measurements read on the screen: one slice's area, a series' volume and
the sections it spans, and the note that says what an outline is (a decision aid's, not a diagnosis).

Pure wording (no Streamlit): the scan panels, the series viewer and the worklist take their lines from here.
Each function returns None when there is nothing to say (no segmenter was loaded): the screen then shows nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.model.decision import ml_text, mm2_text

OUTLINE_LABEL = "Outline"
OUTLINE_HELP = (
    "The lesion segmenter's outline (magenta): where it marks abnormal tissue. A decision aid to check against the "
    "image, not a diagnosis; the heat map shows instead where the classifier looked for its verdict."
)
CAVEAT = "Outlined by the lesion segmenter: a decision aid to check against the image, not a diagnosis."


NOT_KNOWN = "—"  # an unknown size or a change that cannot be computed


def _px(value: float) -> str:
    return f"{value:,.0f}"


_UNITS = {"mL": (ml_text, " mL"), "mm2": (mm2_text, " mm²"), "px": (_px, " px")}  # one way to write each unit


def area_line(area_px: int | None, area_mm2: float | None) -> str | None:
    """ "Lesion: 342 mm² (1,368 px)", "Lesion: 1,368 px (no pixel spacing)", "No lesion outlined", or None."""
    if area_px is None:
        return None
    if area_px == 0:
        return "No lesion outlined"
    if area_mm2 is None:
        return f"Lesion: {area_px:,} px (no pixel spacing)"
    return f"Lesion: {mm2_text(area_mm2)} mm² ({area_px:,} px)"


def span_text(span: tuple[int, int]) -> str:
    """0-based first and last section -> "sections 8–17" (counted from 1, as the viewer's titles count)."""
    first, last = span[0] + 1, span[1] + 1
    return f"section {first}" if first == last else f"sections {first}–{last}"


def volume_line(areas: Sequence[int] | None, volume_ml: float | None, span: tuple[int, int] | None) -> str | None:
    """A series just analysed: "Lesion volume: 12.4 mL, sections 8–17"; without a voxel size, its area in pixels
    and the sections; "No lesion outlined in this series"; None without a segmenter."""
    if areas is None:
        return None
    if span is None:
        return "No lesion outlined in this series"
    if volume_ml is None:
        return f"Lesion: {sum(areas):,} px over {span_text(span)} (no voxel size: no volume in mL)"
    return f"Lesion volume: {ml_text(volume_ml)} mL, {span_text(span)}"


def stored_volume_line(lesion_px: int | None, volume_ml: float | None) -> str | None:
    """A saved series reopened (its outlines are not kept): the volume it was saved with."""
    if lesion_px is None and volume_ml is None:
        return None
    if lesion_px == 0:
        return "No lesion outlined in this series (as saved)"
    if volume_ml is None:
        return f"Lesion: {lesion_px:,} px in all (no voxel size), as saved; outlines are not kept"
    return f"Lesion volume: {ml_text(volume_ml)} mL, as saved; outlines are not kept"


def lesion_size(size: float | None, unit: str | None) -> str:
    """ "3.8 mL", "105 mm²", "1,234 px"; "—" when not measured."""
    if size is None or unit not in _UNITS:
        return NOT_KNOWN
    number, suffix = _UNITS[unit]
    return number(size) + suffix


def lesion_change(change: float | None, unit: str | None, percent: float | None) -> str:
    """ "+1.2 mL (+32%)"; without the percentage when the previous size was 0; "—" when there is no change."""
    if change is None or unit not in _UNITS:
        return NOT_KNOWN
    number, suffix = _UNITS[unit]
    text = ("+" if change >= 0 else "") + number(change) + suffix
    return text if percent is None else f"{text} ({percent:+.0f}%)"
