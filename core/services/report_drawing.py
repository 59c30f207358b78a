"""Drawing on the PDF report's pages (fpdf2): text its core fonts can show, a displayed section in its true
proportions with its patient directions, the key section's lesion outline and a series' tumour-probability curve."""

from __future__ import annotations

import io
import unicodedata

import cv2
import numpy as np

from core.imaging.geometry import orientation_letters
from core.imaging.raster import encode_png
from core.model.lesion import Lesion
from core.services.series_views import SeriesView
from core.services.views import draw_outline, scaled_outline


def pdf_text(value: object) -> str:
    """Text the PDF's core fonts can draw (Latin-1), with the few symbols used here spelled out and any other
    letter or digit written as its code point ("<U+5F20>"): two reviewers named in another script both read "??",
    and a sign-off could not be told from another's."""
    text = str(value).replace("≥", ">=").replace("≤", "<=").replace("–", "-").replace("—", "-").replace("…", "...")
    text = unicodedata.normalize("NFC", text)  # "e" and an accent as one Latin-1 letter where there is one
    return "".join(c if ord(c) < 256 else f"<U+{ord(c):04X}>" if lettering(c) else "?" for c in text)


def lettering(c: str) -> bool:
    """A letter, digit or mark of a word (two names differing by a vowel sign stay two)."""
    return c.isalnum() or unicodedata.category(c).startswith("M")


def png(rgb: np.ndarray) -> io.BytesIO:
    return io.BytesIO(encode_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))


def curve(pdf, view: SeriesView, x: float, y: float, w: float, h: float) -> None:
    pdf.set_draw_color(150, 150, 150)
    pdf.rect(x, y, w, h)
    n = max(len(view.curve) - 1, 1)
    left, top, wide, high = x + 1.0, y + 0.8, w - 2.0, h - 1.6  # dots inside the frame, the threshold on their scale

    def at(i: int, p: float) -> tuple[float, float]:
        return left + wide * i / n, top + high * (1 - p)

    if view.threshold is not None:
        pdf.set_draw_color(211, 47, 47)
        pdf.set_dash_pattern(dash=1, gap=1)
        pdf.line(x, at(0, view.threshold)[1], x + w, at(0, view.threshold)[1])
        pdf.set_dash_pattern()
    pdf.set_draw_color(21, 101, 192)
    previous = None
    for i, p in enumerate(view.curve):
        point = None if p is None else at(i, float(p))
        if point and previous:
            pdf.line(*previous, *point)
        if point:  # a dot for every section read: one between two skipped ones has no line, and was not drawn
            above = view.threshold is not None and float(p) >= view.threshold  # type: ignore[arg-type]
            pdf.set_fill_color(*((211, 47, 47) if above else (21, 101, 192)))
            pdf.circle(x=point[0], y=point[1], radius=0.6 if above else 0.35, style="F")
        previous = point
    pdf.set_font("Helvetica", size=6)
    pdf.set_draw_color(150, 150, 150)
    for number in section_ticks(len(view.curve)):  # which dot is which section (the caption said "1 ... 37" only)
        tick = at(number - 1, 0.0)[0]
        pdf.line(tick, y + h, tick, y + h + 0.8)
        pdf.set_xy(tick - 4, y + h + 0.8)
        pdf.cell(8, 2.4, str(number), align="C")
    for value in (0.0, 0.5, 1.0):  # the scale beside it (the caption's "0 to 1" alone left the dots unread)
        level = at(0, value)[1]
        pdf.line(x - 0.8, level, x, level)
        pdf.set_xy(x - 5.8, level - 1.2)
        pdf.cell(5, 2.4, f"{value:g}", align="R")
    pdf.set_font("Helvetica", size=7)
    pdf.set_xy(x, y + h + 3.5)
    rule = (
        ""
        if view.threshold is None
        else f"; red: at or above the threshold; dashed: the threshold the verdict was judged by {view.threshold:.2f}"
    )
    pdf.cell(w, 3, pdf_text(f"section 1 ... {len(view.curve)}{rule}; P(tumour) 0 to 1"))


def section_ticks(count: int) -> list[int]:
    """The section numbers marked under the curve: the first, the last, and every 5th (10th past 50 sections)."""
    step = 5 if count <= 50 else 10
    return sorted({1, count, *range(step, count, step)}) if count > 1 else [1]


def outlined(section: np.ndarray, lesion: Lesion | None, side: int = 512) -> np.ndarray:
    """The grey section as RGB, enlarged to about ``side`` pixels, with the lesion's outline drawn as on screen
    (:func:`core.services.views.draw_outline`: magenta over a dark rim)."""
    scale = max(1, side // max(section.shape))
    rgb = np.repeat(section[:, :, None], 3, axis=2)
    if scale > 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    draw_outline(rgb, scaled_outline(lesion.outline if lesion else [], scale))
    return rgb


def section_image(
    pdf, view: SeriesView, rgb: np.ndarray, x: float, y: float, side: float, directions: bool = True
) -> None:
    """A displayed section in a ``side`` x ``side`` box, in its true proportions (pixel count and spacing), with
    the patient directions at its edges as the viewer shows them (``directions`` False: none, a copy drawn beside
    one that has them)."""
    rows, columns = rgb.shape[:2]
    spacing = view.geometry.get("spacing") or (1.0, 1.0)
    if not (len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0):
        spacing = (1.0, 1.0)  # a record saved before a zero spacing was refused: square pixels, not a crash
    height, width = rows * float(spacing[0]), columns * float(spacing[1])  # millimetres when the spacing is known
    scale = side / max(height, width)
    w, h = width * scale, height * scale
    left, top = x + (side - w) / 2, y + (side - h) / 2
    pdf.image(png(rgb), x=left, y=top, w=w, h=h)
    if not directions:
        return
    letters = orientation_letters(view.geometry.get("orientation"))  # type: ignore[arg-type]
    pdf.set_font("Helvetica", "B", 7)
    pdf.set_text_color(255, 235, 59)
    pdf.set_fill_color(0, 0, 0)  # on a dark box: yellow on bright tissue (the neck under a coronal "F") was lost
    span = {edge: 2.5 * len(text) + 0.5 for edge, text in letters.items()}  # an oblique edge: "LP"
    for edge, (lx, ly) in {
        "top": (left + w / 2 - span.get("top", 3) / 2, top + 0.5),
        "bottom": (left + w / 2 - span.get("bottom", 3) / 2, top + h - 3.5),
        "left": (left + 0.5, top + h / 2 - 1.5),
        "right": (left + w - span.get("right", 3), top + h / 2 - 1.5),
    }.items():
        if edge in letters:
            pdf.set_xy(lx, ly)
            pdf.cell(span[edge], 3, letters[edge], fill=True)
    if not letters:  # the files give no orientation: said, never left to be assumed
        pdf.set_font("Helvetica", "", 6)
        note = "Orientation not given: left and right unknown"  # wrapped inside a narrow image (it ran past it)
        inside = w >= 12  # narrower, a word did not fit (an error stopped the report): beside it, in black
        width = w - 1 if inside else (side - w) / 2 - 1
        if not inside:
            pdf.set_text_color(0, 0, 0)
        rows = len(pdf.multi_cell(width, 2.6, note, dry_run=True, output="LINES", align="L"))
        pdf.set_xy(left + 0.5 if inside else x, top + h - 0.8 - 2.6 * rows)
        pdf.multi_cell(width, 2.6, note, align="L")
    pdf.set_text_color(0, 0, 0)
