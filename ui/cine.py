"""The quick scroller: a whole series sent to the browser once (JPEG sections and their titles), paged there by
arrow keys, Page Up / Down, the mouse wheel or its own slider, with no round trip to the server; "Open in the
viewer" moves the detailed viewer (zoom, heat map, measurement) to the section shown. The lesion outline, when
shown, is drawn into the sections sent.

A Streamlit custom component (``st.components.v2``) with inline JavaScript: no file, package or network access.
Mounted outside the viewer's fragment, so moving the detailed viewer never re-sends the series.
"""

from __future__ import annotations

import streamlit as st

from core.imaging.geometry import orientation_letters
from core.services.series_views import SeriesView
from ui.viewer_figures import LETTER_PLACES, LETTER_STYLE, NO_ORIENTATION, cine_frames, lesion_note, rule_side
from ui.wording import two_places

_CSS = """
.btd-cine { outline: none; margin-bottom: 0.5rem; }
.btd-cine:focus-visible { box-shadow: 0 0 0 2px var(--st-primary-color, #1f6f8b); }
.btd-cine-title { font-weight: 600; margin: 0.25rem 0; }
.btd-cine-title.marked { color: #c0392b; }
.btd-cine-stage { background: #000; display: flex; justify-content: center; border-radius: 4px; }
.btd-cine-frame { position: relative; line-height: 0; }
.btd-cine-stage img { height: 360px; max-width: 100%; object-fit: contain; display: block; }
.btd-cine-bar { display: flex; gap: 0.75rem; align-items: center; margin-top: 0.25rem; }
.btd-cine-bar input { flex: 1; accent-color: var(--st-primary-color, #1f6f8b); }
.btd-cine-bar button { font: inherit; padding: 0.25rem 0.75rem; border-radius: 0.5rem; cursor: pointer;
  border: 1px solid var(--st-border-color, #c9d3db); background: var(--st-background-color, #fff); }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let root = parentElement.querySelector(".btd-cine");
  if (!root) {
    root = document.createElement("div");
    root.className = "btd-cine";
    root.tabIndex = 0;
    root.setAttribute("role", "group");
    root.setAttribute("aria-label", "Quick scroll through the series");
    root.innerHTML = '<div class="btd-cine-title" aria-live="polite"></div>' +
      '<div class="btd-cine-stage"><div class="btd-cine-frame"><img alt="section of the series"></div></div>' +
      '<div class="btd-cine-bar"><input type="range" min="0" step="1" aria-label="Quick scroll section">' +
      '<button type="button">Open in the viewer</button></div>';
    parentElement.appendChild(root);
  }
  const stage = root.querySelector(".btd-cine-frame");  // the image's own box: letters on its edges, not the page's
  stage.querySelectorAll(".btd-cine-letter").forEach((mark) => mark.remove());
  for (const [side, letter] of Object.entries(data.letters || {})) {  // placed and styled as the Scan page's
    const mark = document.createElement("span");
    mark.className = "btd-cine-letter";
    mark.dataset.side = side;
    mark.style.cssText = "position:absolute;" + data.letter_places[side] + ";" + data.letter_style;
    mark.textContent = letter;  // text, never markup
    stage.appendChild(mark);
  }
  const title = root.querySelector(".btd-cine-title");
  const img = root.querySelector("img");
  const range = root.querySelector("input");
  const button = root.querySelector("button");
  const { frames, titles, marked } = data;
  range.max = String(frames.length - 1);
  const show = (i) => {
    i = Math.max(0, Math.min(frames.length - 1, i));
    range.value = String(i);
    img.src = frames[i];
    title.textContent = titles[i];
    title.classList.toggle("marked", Boolean(marked[i]));
    root.dataset.section = String(i + 1);
  };
  const steps = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1, PageDown: 10, PageUp: -10 };
  range.oninput = () => show(Number(range.value));
  root.onkeydown = (event) => {
    const step = steps[event.key];
    if (step !== undefined && event.target !== range) {
      show(Number(range.value) + step);
      event.preventDefault();
    }
  };
  img.onwheel = (event) => {
    show(Number(range.value) + (event.deltaY > 0 ? 1 : -1));
    event.preventDefault();
  };
  button.onclick = () => setTriggerValue("open", Number(range.value));
  if (root.dataset.series !== data.series) {
    root.dataset.series = data.series;
    show(data.start);
  } else {
    show(Number(range.value));  // the same series with new frames (the outline turned on or off): stay here
  }
}
"""

_CINE = st.components.v2.component("btd_cine", css=_CSS, js=_JS, isolate_styles=False)


def _frames(view: SeriesView, outlined: bool) -> list[str]:
    cache = st.session_state.setdefault("cine-frames", {})
    outlines = view.outlines if outlined else None
    key = (view.key, outlines is not None)
    if key not in cache:
        if len(cache) > 4:  # a few series' worth (about 2.5 MB each at 176 x 256 x 256)
            cache.clear()
        cache[key] = cine_frames(view.sections, outlines)
    return cache[key]


def titles(view: SeriesView) -> list[str]:
    """One line per section: number, place along the series, and the model's reading or why it was skipped."""
    count, lines = len(view.sections), []
    for index in range(count):
        skipped, p = view.skipped.get(index), view.curve[index]
        status = f"skipped: {skipped}" if skipped or p is None else f"P(tumour) {two_places(p)}{rule_side(view, p)}"
        lines.append(f"Section {index + 1} of {count} · {view.place(index)} · {status}{lesion_note(view, index)}")
    return lines


def quick_scroll(view: SeriesView, prefix: str, start: int, outlined: bool = False) -> int | None:
    """Mount the quick scroller (with the lesion outlines drawn in when ``outlined``); returns the section (0-based)
    the reader asked to open in the viewer, if any."""
    marked = set(view.marked)
    data = {
        "series": view.key,
        "start": int(start),
        "frames": _frames(view, outlined),
        "titles": titles(view),
        "marked": [index in marked for index in range(len(view.sections))],
        "letters": orientation_letters(view.geometry.get("orientation")) or {},  # on the image's edges, as the
        # viewer draws them (the caption alone named them, the frames none)
        "letter_places": LETTER_PLACES,
        "letter_style": LETTER_STYLE,
    }
    result = _CINE(key=f"{prefix}-cine", data=data, on_open_change=lambda: None)
    st.caption(directions(view))  # and in words: the same directions hold for every section
    opened = getattr(result, "open", None)
    return None if opened is None else int(opened)


def directions(view: SeriesView) -> str:
    """The patient directions at the quick scroller's image edges, or that the files give none."""
    letters = orientation_letters(view.geometry.get("orientation"))
    if not letters:
        return NO_ORIENTATION + "."
    return "Image edges: " + ", ".join(f"{edge} {letters[edge]}" for edge in ("top", "bottom", "left", "right"))
