"""The series viewer: the quick scroller (the whole series paged in the browser: :mod:`ui.cine`), then the detailed
view: a section slider (arrow keys once focused), window/level presets and free adjustment, zoom and pan (scroll
and drag on the image), orientation letters, the heat map of the current section, a distance measurement in
millimetres and the tumour-probability curve, whose points move the slider when clicked.

One fragment per series for the detailed view: moving through it re-runs the viewer alone, never the page.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.imaging.geometry import orientation_letters
from core.model.decision import FEWER, SERIES_SCORE, review_reason
from core.model.explain import HEAT_MEANING
from core.services.series_views import SeriesView, section_heat
from ui.auth import fragment_actor
from ui.lesion import CAVEAT, OUTLINE_HELP, OUTLINE_LABEL, volume_line
from ui.viewer_figures import (
    WINDOW_PRESETS,
    curve_figure,
    distance_mm,
    lesion_note,
    rule_side,
    section_figure,
    timeline_figure,
    windowed,
)
from ui.wording import LABEL_NAMES, percent, plain, pretty, two_places


def verdict_line(view: SeriesView) -> str:
    if view.label is None:
        return "No verdict: no section could be analysed."
    score = "" if view.score is None else f" · series score **{percent(view.score)}** ({SERIES_SCORE})"
    if view.threshold is None:  # saved by another model before rules were kept with the verdict
        return f"**{pretty(view.label)}**{score} · read by {view.model}, whose series rule was not recorded"
    rule = f"{view.neighbours} neighbouring sections at {judged_note(view)}"
    above = f"{len(view.marked)} of {len(view.sections)} sections above"
    why = review_reason(len(view.window), view.neighbours or len(view.window))
    review = f" · **needs review** ({why})" if view.needs_review else ""
    return f"**{pretty(view.label)}**{score} · rule: tumour when {rule} · {above}{review}{reviewed(view)}"


def judged_note(view: SeriesView) -> str:
    """The rule's threshold, and the one the verdict was judged by when it is higher (on fewer neighbouring sections
    than the rule asks: too few analysed, or a series too short for the rule)."""
    own = view.rule_threshold if view.rule_threshold is not None else view.threshold
    judged = "" if own == view.threshold else f"; judged at {view.threshold:.2f}: on {FEWER}"
    return f"{own:.2f} or more{judged}"


def reviewed(view: SeriesView) -> str:
    """A saved series' last review, beside the model's verdict (analysed again, it read as an open call a colleague
    had already overruled, while the PDF of the same page gave the final label)."""
    record = view.record
    if record is None or not record.review_count or record.final_label is None:
        return ""
    by = f" by {plain(record.reviewer)}" if record.reviewer else ""  # a name is text from outside: never Markdown
    return f" · **final label {pretty(record.final_label)}**{by} (reviewed)"


def _heat(view: SeriesView, index: int, classifier, explainer):
    """A section's heat map, kept for the session as 8 bits a pixel (a quarter of float32: 64 maps of 512 x 512
    held 64 MiB a session, now 16), bounded."""
    cache = st.session_state.setdefault("viewer-heat", {})
    key = (view.key, index)
    if key not in cache:
        if len(cache) > 64:  # a bounded cache: a session never holds more than a few series' worth of maps
            cache.clear()
        cache[key] = small_heat(section_heat(view, index, classifier, explainer))
    kept = cache[key]
    return None if kept is None else kept.astype(np.float32) / 255.0


def small_heat(heat: np.ndarray | None) -> np.ndarray | None:
    """A 0..1 heat map as uint8 (what the screen can show anyway)."""
    return None if heat is None else np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)


def start_section(view: SeriesView) -> int:
    """The section that decided a tumour verdict (the middle of the best window); under another verdict the
    likeliest section (a "no tumour" opened at its best run below the threshold, sections over 0.99 elsewhere
    unseen); else the middle of the series."""
    read = [i for i, p in enumerate(view.curve) if p is not None]
    if not view.is_tumour and read:
        return max(read, key=lambda i: view.curve[i] or 0.0)
    return view.window[len(view.window) // 2] if view.window else len(view.sections) // 2


def section_title(view: SeriesView, index: int) -> str:
    """The detailed viewer's title: section, place, the model's reading against the series rule that made the
    verdict (or why skipped), the call it would get as a single scan, and the lesion's area. A section at 0.40 under
    a rule at 0.30 counted toward "Glioma" while its title said only "No tumour", the single-scan call."""
    skipped, p = view.skipped.get(index), view.curve[index]
    if skipped or p is None:
        status = f"skipped: {skipped or 'not analysed'}"
    else:
        status = f"P(tumour) {two_places(p)}{rule_side(view, p)}"
        if view.section_labels[index]:
            status += f" · as a single scan: {pretty(view.section_labels[index])}"
    return f"Section {index + 1} of {len(view.sections)} · {view.place(index)} · {status}{lesion_note(view, index)}"


def series_panel(view: SeriesView, classifier, explainer, prefix: str) -> None:
    """The lesion volume and the outline toggle (a series just analysed, with a segmenter), the quick scroller
    above the detailed viewer; "Open in the viewer" moves the detailed viewer there."""
    from ui.cine import quick_scroll

    lesion = volume_line(view.lesion_areas, view.lesion_ml, view.lesion_span)
    if lesion is not None:  # nothing without a segmenter; a saved series shows the volume it was saved with
        st.markdown(f"**{lesion}**")
        st.caption(CAVEAT)
    outlined = view.lesion_span is not None and st.toggle(
        OUTLINE_LABEL, value=True, key=f"{prefix}-outline", help=OUTLINE_HELP
    )  # outside the viewer's fragment: the quick scroller's sections change with it
    st.caption("Quick scroll: arrow keys, Page Up / Down or the mouse wheel once the series below is clicked.")
    opened = quick_scroll(view, prefix, start_section(view), outlined)
    if opened is not None:
        st.session_state[f"{prefix}-section"] = opened + 1
    series_viewer(view, classifier, explainer, prefix, outlined)


def _section_slider(place, count: int, key: str) -> int:
    """The section shown, from 0 (a slider needs two values: one section has nothing to move through)."""
    if count < 2:
        place.caption("Section 1 of 1 (a single section)")
        return 0
    return place.slider("Section", 1, count, key=key, help="Arrow keys move one section.") - 1


@st.fragment
def series_viewer(view: SeriesView, classifier, explainer, prefix: str, outlined: bool = False) -> None:
    """The viewer for one series (``prefix`` keeps its widgets apart from other series on the page), with the
    lesion outline on the section shown when ``outlined``."""
    fragment_actor()
    count = len(view.sections)
    slider_key, curve_key = f"{prefix}-section", f"{prefix}-curve"
    picked = st.session_state.get(curve_key)
    points = picked.selection.points if picked and picked.selection else []
    if points and st.session_state.get(f"{curve_key}-last") != points[0]["x"]:  # a click on the curve
        st.session_state[f"{curve_key}-last"] = points[0]["x"]
        st.session_state[slider_key] = int(points[0]["x"])  # the curve and the slider count sections from 1
    if slider_key not in st.session_state:  # start on the section that decided the verdict
        st.session_state[slider_key] = start_section(view) + 1

    controls = st.columns([3, 1.3, 1, 1])
    index = _section_slider(controls[0], count, slider_key)
    preset = controls[1].selectbox("Window", list(WINDOW_PRESETS), key=f"{prefix}-preset")
    custom_note = controls[1].empty()
    show_heat = controls[2].toggle(
        "Heat map",
        value=False,
        key=f"{prefix}-heat",
        help=f"Computed when shown. {HEAT_MEANING}",
    )
    opacity = controls[3].slider("Opacity", 0.0, 1.0, 0.4, 0.05, key=f"{prefix}-opacity", disabled=not show_heat)
    with st.expander("Level / width and measurement"):
        level_default, width_default = WINDOW_PRESETS[preset]
        cols = st.columns(2)
        level = cols[0].slider("Level", 0, 255, level_default, key=f"{prefix}-level-{preset}")
        width = cols[1].slider("Width", 1, 512, width_default, key=f"{prefix}-width-{preset}")
        if (level, width) != (level_default, width_default):
            custom_note.caption(f"Custom: level {level}, width {width}")
        st.caption("Presets are windows on the displayed 0-255 scale: MR signal has no fixed units.")
        h, w = view.sections.shape[1:]
        measure = st.toggle("Measure a distance", key=f"{prefix}-measure")
        line = None
        if measure:
            m = st.columns(4)
            x0 = m[0].number_input("x₁", 0, w - 1, w // 4, key=f"{prefix}-x0")
            y0 = m[1].number_input("y₁", 0, h - 1, h // 2, key=f"{prefix}-y0")
            x1 = m[2].number_input("x₂", 0, w - 1, 3 * w // 4, key=f"{prefix}-x1")
            y1 = m[3].number_input("y₂", 0, h - 1, h // 2, key=f"{prefix}-y1")
            line = ((x0, y0), (x1, y1))
            length = distance_mm((x0, y0), (x1, y1), view.geometry.get("spacing"))
            st.markdown(
                f"Distance **{length:.1f} mm**"
                if length is not None
                else "No pixel spacing in this series: distances cannot be given in millimetres."
            )
            st.caption("Hover over the image for pixel coordinates.")
    heat = _heat(view, index, classifier, explainer) if show_heat else None
    title = section_title(view, index)
    letters = orientation_letters(view.geometry.get("orientation"))
    st.plotly_chart(
        section_figure(
            windowed(view.sections[index], level, width),
            heat=heat,
            opacity=opacity,
            letters=letters,
            line=line,
            outline=view.outlines[index] if outlined and view.outlines is not None else None,
            title=title,
        ),
        config={"scrollZoom": True, "displaylogo": False},
        key=f"{prefix}-image",
    )
    st.plotly_chart(
        curve_figure(view.curve, view.threshold, index, view.marked),
        key=curve_key,
        on_select="rerun",
        selection_mode="points",
        config={"displaylogo": False},
    )


def timeline(records, days: dict[str, int] | None) -> None:
    """A patient's results over time (scans and series), tumour probability on the vertical axis: across, the
    days from the first scan when every result has its scan day (``days``), else when each was saved."""
    st.plotly_chart(
        timeline_figure(
            [days[r.id] for r in records] if days else [f"{r.created_at:%Y-%m-%d %H:%M}" for r in records],
            [r.tumour_probability for r in records],
            [r.final_label or r.label for r in records],
            [r.kind for r in records],
            LABEL_NAMES,
            reviewed=[r.final_label is not None for r in records],
            scanned=days is not None,
        ),
        config={"displaylogo": False},
        key="history-timeline",
    )
    st.caption(  # with one kind of result Plotly drew no legend: red and green, circles and squares unexplained
        "Red: tumour, green: no tumour (the radiologist's final label where reviewed, else the model's verdict); "
        "circles: single scans, squares: series. Height: the model's tumour probability (a series: its score), "
        "which an override does not change. Across: "
        + (
            "days from this patient's first scan."
            if days
            else "when each was saved (UTC), not scanned: some have no scan date, so a study saved late stands "
            "after the later ones."
        )
    )


def _delta(value: float | None, what: str) -> str | None:
    """A change of probability as the metrics show it, named (a red "+0.89" under a series read as the lesion's
    growth); none to show below a hundredth (a "+0.00" drew a red up arrow)."""
    return None if value is None or abs(value) < 0.005 else f"{value:+.2f} {what} since the prior"


def _beside(current: SeriesView, index: int, prior, kept_prior, heat: bool, classifier, explainer):
    """The prior's matching section beside the current one (its record's series score alone once its images are
    purged), and the change to show; None without a prior."""
    from core.services.history import (
        change,
        kept_caveat,
        kept_change,
        model_caveat,
        order_caveat,
        plane_caveat,
        sections_correspond,
    )

    if prior is None and kept_prior is None:
        st.info("No prior chosen to show beside it.")
        return None
    if prior is None:  # said, never "no prior chosen", and its score still compared (its record keeps it)
        caveat = kept_caveat(current, kept_prior)
        st.info(
            "The images of the prior chosen are no longer kept (retention period): its sections cannot be shown"
            + ("." if caveat else "; its series score is compared below.")
        )
        if caveat:  # no change for another model or plane: said, never left to read as "unchanged"
            st.warning(caveat)
        moved = kept_change(current, index, kept_prior)
    else:
        matched, moved = change(current, index, prior)
        for caveat in (plane_caveat(current, prior), order_caveat(current, prior), model_caveat(current, prior)):
            if caveat:
                st.warning(caveat)
        q = prior.curve[matched]
        st.plotly_chart(
            section_figure(
                prior.sections[matched],
                heat=_heat(prior, matched, classifier, explainer) if heat else None,
                letters=orientation_letters(prior.geometry.get("orientation")),
                title=f"Prior · section {matched + 1}, {prior.place(matched)} · "
                + ("skipped" if q is None else f"P {two_places(q)}")
                + ("" if sections_correspond(current, prior) else " (its deciding section, not matched)"),
                height=420,
            ),
            config={"scrollZoom": True, "displaylogo": False},
            key="cmp-prior",
        )
    return moved


@st.fragment
def comparison(current: SeriesView, prior: SeriesView | None, classifier, explainer, kept_prior=None) -> None:
    """The current series beside a prior at the matching position (relative place along the analysed head),
    with the change in tumour probability for the series and at this section; ``kept_prior``: the record of a
    prior chosen whose images are no longer kept (its series score is still compared)."""
    fragment_actor()
    count = len(current.sections)
    if count > 1:
        index = st.slider("Section", 1, count, start_section(current) + 1, key=f"cmp-{current.key[:8]}") - 1
    else:
        index = 0
    letters = orientation_letters(current.geometry.get("orientation"))
    heat = st.toggle("Heat maps", value=False, key=f"cmp-heat-{current.key[:8]}", help=HEAT_MEANING)  # off: red
    if heat:  # blobs side by side in a "change over time" view read as the lesion
        st.caption(HEAT_MEANING)
    left, right = st.columns(2)
    with left:
        p = current.curve[index]
        st.plotly_chart(
            section_figure(
                current.sections[index],
                heat=_heat(current, index, classifier, explainer) if heat else None,
                letters=letters,
                title=f"Now · section {index + 1}, {current.place(index)} · "  # in mm: a match 15 mm off shows
                + ("skipped" if p is None else f"P {two_places(p)}"),
                height=420,
            ),
            config={"scrollZoom": True, "displaylogo": False},
            key="cmp-now",
        )
    with right:
        moved = _beside(current, index, prior, kept_prior, heat, classifier, explainer)
    if moved is None:
        return
    a, b = st.columns(2)
    a.metric(
        "Series score",
        "-" if moved.series_now is None else two_places(moved.series_now),
        _delta(moved.series_change, "in score"),
        delta_color="inverse",
        help=f"The series score, {SERIES_SCORE}; its change since the prior series.",
    )
    b.metric(
        "At this section, now",  # the current series' value, beside the prior's image: its change since the prior's
        "-" if moved.section_now is None else two_places(moved.section_now),
        _delta(moved.section_change, "in probability"),
        delta_color="inverse",
        help="Matched by relative place along the analysed head: studies on different days are not in the "
        "same coordinates.",
    )
