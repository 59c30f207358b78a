"""The series viewer's figures and pixels, as pure functions (no Streamlit): window/level on displayed sections,
distances, the quick scroller's frames, the section figure (scroll zoom and pan, orientation letters, the heat map,
the lesion outline, a measured line), the tumour-probability curve and a patient's timeline.

MR intensities have no fixed units (unlike CT's Hounsfield units), and a section arrives here already mapped to
0-255 for display (its DICOM window, else a percentile stretch). The presets are therefore windows on that display
scale, named for the reading task they approximate; the level and width can be set freely.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from itertools import product
from typing import Any

import cv2
import numpy as np
import plotly.graph_objects as go

from core.imaging.dicom_display import apply_window
from core.model.explain import overlay
from core.services.views import OUTLINE_RGB, draw_outline
from ui.lesion import lesion_size
from ui.wording import two_places

OUTLINE_COLOR = "#{:02x}{:02x}{:02x}".format(*OUTLINE_RGB)

# name -> (level, width) on the 0-255 display scale; named by what they do to an MR image's contrast, not after CT's
# Hounsfield windows ("Stroke", "Subdural": a "stroke" view of an MR display scale promised what only DWI shows)
WINDOW_PRESETS: dict[str, tuple[int, int]] = {
    "As stored": (128, 256),
    "Brain": (120, 160),  # grey-white matter contrast: the middle of the range, stretched
    "Wide": (140, 230),  # thin bright or dark collections against the skull
    "Narrow": (110, 80),  # small differences in parenchymal signal
}


def windowed(section: np.ndarray, level: float, width: float) -> np.ndarray:
    """uint8 section -> uint8 through DICOM's linear window (:func:`core.imaging.dicom_display.apply_window`, LINEAR):
    ``level`` at mid-grey, ``width`` grey levels spread over 0-255 (at least 1: a threshold at the level);
    "as stored" (128, 256) changes nothing."""
    return apply_window(section, level, max(float(width), 1.0), "LINEAR")


def distance_mm(start: tuple[float, float], end: tuple[float, float], spacing: Sequence[float] | None) -> float | None:
    """Length of the line from ``start`` to ``end`` ((x, y) in displayed pixels) in millimetres, from the
    (row, column) pixel spacing of the displayed section; None without a spacing."""
    if not spacing:
        return None
    row, column = float(spacing[0]), float(spacing[1])
    return math.hypot((end[0] - start[0]) * column, (end[1] - start[1]) * row)


def data_uri(image: np.ndarray, kind: str, params: Sequence[int] = ()) -> str:
    """An 8-bit image (grey or BGR) encoded by OpenCV as a ``data:image/<kind>`` URI."""
    _, encoded = cv2.imencode(f".{'jpg' if kind == 'jpeg' else kind}", image, list(params))
    return f"data:image/{kind};base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def cine_frames(
    sections: np.ndarray, outlines: Sequence[Sequence[np.ndarray]] | None = None, quality: int = 85
) -> list[str]:
    """Every displayed section as a JPEG data URI (about 15 KB at 256 x 256), for the quick scroller: the browser
    pages through the whole series without asking the server, so a key press shows the next section at once.
    With ``outlines`` (per section, (x, y) contours on displayed pixels) each lesion is drawn in, in colour."""
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, quality]
    frames = []
    for index, section in enumerate(sections):
        image = np.ascontiguousarray(section, dtype=np.uint8)
        if outlines is not None and len(outlines[index]):
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            draw_outline(image, outlines[index], OUTLINE_RGB[::-1])
        frames.append(data_uri(image, "jpeg", jpeg))
    return frames


NO_ORIENTATION = "Orientation not given: left and right unknown"


def rule_side(view: Any, p: float) -> str:
    """ " (at or above the series threshold 0.30)", or below: a section's reading against the series rule that
    made the verdict; nothing when the rule is not known."""
    if view.threshold is None:
        return ""
    return f" ({'at or above' if p >= view.threshold else 'below'} the series threshold {view.threshold:.2f})"


def lesion_note(view: Any, index: int) -> str:
    """ " · lesion 342 mm²" for a section with a lesion outlined (a title's ending; " · lesion 1,368 px" when the
    series gives no pixel spacing); "" otherwise."""
    areas, mm2 = view.lesion_areas, view.lesion_mm2
    if areas is None or not areas[index]:
        return ""
    return f" · lesion {lesion_size(mm2[index], 'mm2')}" if mm2 is not None else f" · lesion {areas[index]:,} px"


def outline_shapes(outline: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """The lesion contours as closed Plotly paths on the image's pixel coordinates (sharp at any zoom): a dark rim
    under a bright line, as on the scan page."""
    paths = [
        "M" + "L".join(f"{int(x)},{int(y)}" for x, y in np.asarray(c).reshape(-1, 2)) + "Z"
        for c in outline
        if len(c) >= 2
    ]
    return [
        {"type": "path", "path": path, "line": {"color": color, "width": width}, "layer": "above"}
        for path in paths
        for color, width in (("#000000", 4), (OUTLINE_COLOR, 2))
    ]


TITLE_WIDTH = 58  # characters a line of a section's title holds beside the chart's toolbar


def title_lines(title: str) -> list[str]:
    """A section's title on as many lines as it needs, broken between its parts (" · "): on one line, a long one
    ran under Plotly's toolbar and past the chart's edge ("... at or above the series threshold 0.50" cut)."""
    lines: list[str] = []
    for part in title.split(" · ") if title else []:
        if lines and len(lines[-1]) + 3 + len(part) <= TITLE_WIDTH:
            lines[-1] += f" · {part}"
        else:
            lines.append(part)
    return lines


# the patient directions drawn over an image in the page (the Scan page's images, the quick scroller): at each edge's
# middle, on a dark box, as the viewer's figure draws them (:func:`_letter_annotations`)
LETTER_PLACES = {
    "left": "left:2px;top:50%;transform:translateY(-50%)",
    "right": "right:2px;top:50%;transform:translateY(-50%)",
    "top": "top:2px;left:50%;transform:translateX(-50%)",
    "bottom": "bottom:2px;left:50%;transform:translateX(-50%)",
}
LETTER_STYLE = (
    "color:#ffd54f;background:rgba(0,0,0,0.6);font-weight:700;font-size:0.85rem;padding:0 3px;line-height:1.2"
)


def _letter_annotations(letters: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """The patient directions at the image's own edges (its axes' domains, fitted to the image): placed on the whole
    chart, R and L stood in the page's white margins beside a narrower image, yellow on near-white; on a dark box,
    seen on any pixels. Files that give no orientation: said on the image, never left to be assumed."""
    places = {"left": (0.0, 0.5, "left"), "right": (1.0, 0.5, "right"), "top": (0.5, 1.0, "center"),
              "bottom": (0.5, 0.0, "center")}  # fmt: skip
    annotations = [
        {
            "x": places[side][0],
            "y": places[side][1],
            "xref": "x domain",
            "yref": "y domain",
            "xanchor": places[side][2],
            "yanchor": {"top": "top", "bottom": "bottom"}.get(side, "middle"),
            "text": f"<b>{text}</b>",
            "showarrow": False,
            "font": {"color": "#ffd54f", "size": 16},
            "bgcolor": "rgba(0, 0, 0, 0.6)",
            "borderpad": 3,
        }
        for side, text in (letters or {}).items()
        if side in places
    ]
    if letters is not None and not letters:  # the files give no orientation: said, never left to be assumed
        annotations.append(
            {
                "x": 0.01,
                "y": 0.01,
                "xref": "x domain",
                "yref": "y domain",
                "xanchor": "left",
                "yanchor": "bottom",
                "text": NO_ORIENTATION,
                "showarrow": False,
                "font": {"color": "#ffd54f", "size": 12},
            }
        )
    return annotations


def section_figure(
    section: np.ndarray,
    *,
    heat: np.ndarray | None = None,
    opacity: float = 0.4,
    letters: Mapping[str, str] | None = None,
    line: tuple[tuple[float, float], tuple[float, float]] | None = None,
    outline: Sequence[np.ndarray] | None = None,
    title: str = "",
    height: int = 560,
) -> dict[str, Any]:
    """A displayed section as a zoomable image (scroll to zoom, drag to pan), the heat map (0..1, same shape)
    blended in when given, the patient directions at the edges, the lesion outline ((x, y) contours on displayed
    pixels) and a measured line.

    The viewer's figures are plain Plotly specifications (dicts): building and validating graph objects cost
    tens of milliseconds per figure, on every step of a scroll through a series."""
    # a PNG data URI, not a z array: a 256 x 256 x 3 array goes out as 196,608 JSON numbers on every scroll step;
    # without a heat map a grey one (the section in three channels was 2.6 times the bytes on every key press)
    if heat is None:
        source = data_uri(np.ascontiguousarray(section, dtype=np.uint8), "png")
    else:  # the colours of the Scan page, the Worklist and the PDF (a red-white blend here read otherwise)
        rgb = overlay(np.asarray(section, np.uint8), np.clip(heat, 0.0, 1.0).astype(np.float32), opacity)
        source = data_uri(cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR), "png")
    h, w = section.shape
    annotations = _letter_annotations(letters)
    shapes = outline_shapes(outline) if outline is not None else []
    if line is not None:
        (x0, y0), (x1, y1) = line
        shapes.append(
            {"type": "line", "x0": x0, "y0": y0, "x1": x1, "y1": y1, "line": {"color": "#00e5ff", "width": 2}}
        )
    lines = title_lines(title)
    return {
        "data": [{"type": "image", "source": source, "hovertemplate": "x %{x}, y %{y}<extra></extra>"}],
        "layout": {
            # inside the chart's top margin, below its top edge (at 0.99 of the chart its first line rose past the
            # edge, under the control above the chart: the section's position in mm half hidden)
            "title": {
                "text": "<br>".join(lines),
                "x": 0,
                "xanchor": "left",
                "yref": "container",
                "y": 1 - 22 / height,  # the first line's height down: Plotly anchors a title by its first baseline
                "yanchor": "top",
            },
            "height": height,
            "dragmode": "pan",
            "annotations": annotations,
            "shapes": shapes,
            "margin": {"l": 0, "r": 0, "t": 16 + 22 * len(lines) if title else 0, "b": 0},
            "xaxis": {"visible": False, "range": [-0.5, w - 0.5], "constrain": "domain"},
            "yaxis": {"visible": False, "range": [h - 0.5, -0.5], "constrain": "domain"},
        },
    }


def curve_figure(
    curve: Sequence[float | None],
    threshold: float | None,
    current: int,
    marked: Sequence[int] = (),
    height: int = 220,
) -> dict[str, Any]:
    """Tumour probability along the series (gaps where a section was skipped), the rule's threshold, the
    sections above it and the current section; each point can be clicked to go there. No threshold line when the
    rule that made the verdict is not known."""
    y = [None if p is None else round(float(p), 4) for p in curve]
    layout = _curve_layout(threshold, current, height)
    # whole sections from 1: a short series had ticks at 1.5, 2.5 (and 0 to 2 for one section), a long one a "0"
    layout["xaxis"] |= {"range": [0.5, len(y) + 0.5], "tickformat": "d"} | ({"dtick": 1} if len(y) <= 15 else {})
    return {"data": _curve_traces(y, marked), "layout": layout}


def _markers(
    x: list[int], y: list[float | None], name: str, marker: dict[str, Any], hover: str, text: list[str] | None = None
) -> dict[str, Any]:
    return {
        "type": "scatter",
        "x": x,
        "y": y,
        "text": text,
        "mode": "markers",
        "name": name,
        "marker": marker,
        "hovertemplate": hover,
    }


SKIPPED_AT = -0.12  # below the probability axis: a skipped section is no P(tumour) of 0 ("no tumour")


def _curve_traces(y: list[float | None], marked: Sequence[int]) -> list[dict[str, Any]]:
    """The probability per section, then the sections at or above the threshold and the skipped ones (if any)."""
    hover = "section %{x}: %{text}<extra></extra>"  # written as the viewer's title writes it: never "1.00"
    text = ["" if p is None else two_places(p) for p in y]
    data = [
        {
            "type": "scatter",
            "x": list(range(1, len(y) + 1)),  # sections counted from 1, as every title and the slider do
            "y": y,
            "text": text,
            "mode": "lines+markers",
            "connectgaps": False,
            "name": "tumour probability",
            "marker": {"size": 6, "color": "#546e7a"},
            "hovertemplate": hover,
        }
    ]
    above = [i for i in marked if y[i] is not None]
    if above:
        marker = {"size": 9, "color": "#d32f2f"}
        shown = [text[i] for i in above]
        data.append(
            _markers([i + 1 for i in above], [y[i] for i in above], "at or above threshold", marker, hover, shown)
        )
    skipped = [i for i, p in enumerate(y) if p is None]
    if skipped:
        marker = {"symbol": "x", "size": 6, "color": "#9e9e9e"}
        hover_skipped = "section %{x}: skipped, not analysed<extra></extra>"
        data.append(_markers([i + 1 for i in skipped], [SKIPPED_AT] * len(skipped), "skipped", marker, hover_skipped))
    return data


def _curve_layout(threshold: float | None, current: int, height: int) -> dict[str, Any]:
    """Axes, the threshold as a labelled dashed line across the plot and the current section as a vertical one."""
    layout = _curve_axes(threshold if threshold is not None else 0.0, current, height)
    if threshold is None:
        layout["shapes"], layout["annotations"] = layout["shapes"][1:], []
    return layout


def _curve_axes(threshold: float, current: int, height: int) -> dict[str, Any]:
    shapes = [
        {
            "type": "line",
            "xref": "paper",
            "x0": 0,
            "x1": 1,
            "y0": threshold,
            "y1": threshold,
            "line": {"dash": "dash", "color": "#d32f2f"},
        },
        {
            "type": "line",
            "yref": "paper",
            "x0": current + 1,
            "x1": current + 1,
            "y0": 0,
            "y1": 1,
            "line": {"color": "#1565c0", "width": 2},
        },
    ]
    rule = {
        "xref": "paper",
        "x": 1,
        "y": threshold,
        "yanchor": "bottom",
        "xanchor": "right",
        "text": f"judged at {threshold:.2f}",
        "showarrow": False,
        "font": {"color": "#d32f2f"},
    }
    return {
        "height": height,
        "shapes": shapes,
        "showlegend": True,
        # above the plot, in a margin of its own: at y 1.15 with a 10 px margin it lay over the top of the plot, and
        # hid the deciding sections, whose P(tumour) is near 1
        "legend": {"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
        "margin": {"l": 40, "r": 10, "t": 34, "b": 30},
        "xaxis": {"title": {"text": "section"}},
        "yaxis": {"range": [-0.18, 1.05], "tickvals": [0, 0.25, 0.5, 0.75, 1], "title": {"text": "P(tumour)"}},
        "annotations": [rule],
    }


def timeline_figure(
    times: Sequence[str],
    probabilities: Sequence[float],
    labels: Sequence[str],
    kinds: Sequence[str],
    names: Mapping[str, str],
    height: int = 260,
    reviewed: Sequence[bool] | None = None,
    scanned: bool = False,
) -> go.Figure:
    """A patient's results over time: tumour probability per result, circles for scans, squares for series, by
    verdict (the radiologist's final label where there is one, ``reviewed``, else the model's: a no tumour call
    overridden to glioma was drawn green): a tumour filled and red, no tumour open and green (by colour alone, a
    reader who cannot tell red from green could not tell them apart; the legend named neither). ``times``: when
    each was saved, or, ``scanned``, its day from the patient's first scan."""
    reviewed = reviewed or [False] * len(labels)
    figure = go.Figure()
    for (kind, symbol), tumour in product((("scan", "circle"), ("series", "square")), (True, False)):
        chosen = [i for i, k in enumerate(kinds) if k == kind and (labels[i] != "notumor") == tumour]
        if not chosen:
            continue
        value = "series score" if kind == "series" else "P(tumour)"  # a series' is its rule's score, no probability
        figure.add_trace(
            go.Scatter(
                x=[times[i] for i in chosen],
                y=[probabilities[i] for i in chosen],
                mode="markers",
                name=f"{kind}: {'tumour' if tumour else 'no tumour'}",
                marker={
                    "symbol": symbol if tumour else f"{symbol}-open",
                    "size": 11,
                    "color": "#d32f2f" if tumour else "#2e7d32",
                    "line": {"width": 2},
                },
                text=[
                    names.get(labels[i], labels[i]) + (" (radiologist)" if reviewed[i] else " (model)") for i in chosen
                ],
                customdata=[two_places(probabilities[i]) for i in chosen],
                hovertemplate=("day %{x}" if scanned else "%{x} UTC")
                + f"<br>%{{text}}: {value} %{{customdata}}<extra></extra>",
            )
        )
    figure.update_layout(
        height=height,
        margin={"l": 40, "r": 10, "t": 30, "b": 30},
        yaxis={"range": [-0.05, 1.05], "title": "P(tumour); series: score"},
        # above the plot: below it, it covered the first tick labels
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
    )
    if scanned:
        figure.update_xaxes(title="days from the first scan", rangemode="tozero")
    elif times:  # results within a day: around them with room (never a millisecond; a whole day stacked results
        # saved minutes apart on one another)
        first, last = (datetime.fromisoformat(str(t)) for t in (min(times), max(times)))
        if last - first < timedelta(days=1):
            pad = max((last - first) * 0.15, timedelta(minutes=30))
            figure.update_xaxes(type="date", range=[str(first - pad), str(last + pad)])
    return figure
