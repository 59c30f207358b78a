"""Render helpers: one panel per uploaded scan, drawn the same way for every upload, each a fragment so that its
own controls (frame, heat-map class and opacity) re-run that panel alone."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.errors import ModelError
from core.model.decision import SERIES_SCORE
from core.model.explain import HEAT_MEANING, heat_title
from core.model.gate import NEEDS_REVIEW, REJECTED
from core.services.triage import NOT_SAVED, NOT_UPDATED, Triaged
from ui import resources
from ui.auth import fragment_actor
from ui.batch import Upload
from ui.lesion import CAVEAT, OUTLINE_HELP, OUTLINE_LABEL, area_line, stored_volume_line
from ui.viewer import series_panel, verdict_line
from ui.viewer_figures import LETTER_PLACES, LETTER_STYLE, NO_ORIENTATION
from ui.wording import (
    CALL_CONFIDENCE,
    CONFIDENCE_HELP,
    REFUSED,
    count_of,
    percent,
    plain,
    pretty,
    reason_shown,
    result_kind,
    verdict_shown,
)

PREDICTED = "the verdict's class"


@dataclass(frozen=True)
class Encoded:
    """A PNG already in base64 (a view's, made once)."""

    base64: str


def inline_image(
    container, image: bytes | np.ndarray | Encoded, caption: str, letters: Mapping[str, str] | None = None
) -> None:
    """An image inside the page itself (a PNG data URI), never a ``/media/`` URL: Streamlit's media URLs answer
    anyone who has them, without the session's cookie, for as long as the server keeps them; these pixels exist
    only in the signed-in page. The caption is plain text (escaped). ``letters``: the patient directions, drawn at
    the image's edges as the viewer and the PDF draw them (the caption alone named them, P never)."""
    if isinstance(image, Encoded):  # made once by the view: not encoded again on every rerun
        source = image.base64
    else:
        if isinstance(image, bytes):
            png = image
        else:
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
            png = buffer.getvalue()
        source = base64.b64encode(png).decode("ascii")
    text = html.escape(caption)
    marks = "".join(
        f'<span style="position:absolute;{LETTER_PLACES[side]};{LETTER_STYLE}">{html.escape(letter)}</span>'
        for side, letter in (letters or {}).items()
        if side in LETTER_PLACES
    )
    container.html(
        f'<figure class="btd-image" style="margin:0"><div style="position:relative"><img '
        f'src="data:image/png;base64,{source}" alt="{text}" style="width:100%;height:auto;display:block"/>{marks}'
        f'</div><figcaption style="font-size:0.8rem;opacity:0.7">{text}</figcaption></figure>'
    )


def probability_table(probabilities: dict[str, float]) -> None:
    """Class probabilities as bars in a small table (cheaper to re-draw than one chart per scan), each stated as the
    panels state them (the bars' own "%.1f %%" read "0.0 %" and "100.0 %")."""
    frame = pd.DataFrame(
        {
            "class": [pretty(k) for k in probabilities],
            "probability": [percent(v) for v in probabilities.values()],
            "bar": [v * 100 for v in probabilities.values()],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={  # narrow enough for the panel's column (the bars ran past its right edge, cut)
            "bar": st.column_config.ProgressColumn(" ", format=" ", min_value=0, max_value=100, width=48)
        },
    )


def _verdict(result: Triaged) -> None:
    view = result.view
    assert view is not None
    prediction, gate = view.prediction, view.prediction.gate
    record = result.record
    if record is not None and record.review_count and record.final_label:  # uploaded again after its review: the
        # radiologist's label leads, as on the Worklist, History and the PDF
        refused = gate.decision == REJECTED  # no verdict of the model's to set it beside
        said = (
            f"Reviewed since it was saved: final label **{pretty(record.final_label)}** by {plain(record.reviewer)}"
            f" on {record.reviewed_at:%Y-%m-%d %H:%M} UTC" + ("." if refused else " (the model's verdict is below).")
        )
        differs = not refused and record.final_label != prediction.label
        (st.error if differs else st.info)(said, icon=":material/rate_review:")
    if gate.decision == REJECTED:
        st.error(f"{REFUSED}: " + "; ".join(gate.reasons) + ". No verdict given.")  # as the lists name it
    else:
        if gate.decision == NEEDS_REVIEW and record is not None and record.review_count:  # the flag was answered
            st.caption(f"Flagged for review ({'; '.join(gate.reasons)}); reviewed since.")
        elif gate.decision == NEEDS_REVIEW:
            st.warning(f"Needs review: {'; '.join(gate.reasons)}.", icon=":material/rate_review:")
        st.metric(
            "Verdict",
            pretty(prediction.label),
            help="Tumour when the calibrated tumour probability reaches the model's threshold; then the most "
            "probable tumour type, or 'type uncertain' when no type stands out.",
        )
        st.markdown(
            f"Tumour probability **{percent(prediction.tumour_probability)}** · {CALL_CONFIDENCE} "
            f"{percent(prediction.confidence)} · model {prediction.model_name} {prediction.model_version}",
            help=CONFIDENCE_HELP,
        )
        lesion = area_line(view.lesion_px, view.lesion_mm2)
        if lesion is not None:  # nothing at all without a segmenter
            st.markdown(f"**{lesion}**")
            st.caption(CAVEAT)
        probability_table(dict(prediction.probabilities))
    status = result.status
    if status is not None and status.state in (NOT_SAVED, NOT_UPDATED):
        st.warning(f"{status.state.capitalize()}: {status.message}", icon=":material/warning:")
    elif status is not None and status.another_patient:  # another patient's, a likely mix-up: no grey
        st.warning(f"Result {status.state}, but {status.message}.", icon=":material/warning:")
    elif status is not None:
        note = f": {status.message}" if status.message else ""
        st.caption(f"Result {status.state}{note}. Analysed in {prediction.timings_ms['total']:.0f} ms.")


def edges(letters: Mapping[str, str]) -> str:
    """The patient directions at a shown image's edges for its caption, or that the file does not give them."""
    if not letters:
        return f" · {NO_ORIENTATION[0].lower()}{NO_ORIENTATION[1:]}"
    return (
        f" · patient's {letters['left']} at left, {letters['right']} at right, {letters['top']} at top, "
        f"{letters['bottom']} at bottom"
    )


@st.fragment
def scan_panel(
    index: int, upload: Upload, labels: tuple[str, ...], choose_frame: Callable[[Upload, int], None]
) -> None:
    """Original with box | crop as the model sees it | the heat map | verdict, probabilities, save status."""
    fragment_actor()
    st.markdown(f"**Scan {index}**")
    st.text(upload.name)  # plain text: a file name is never read as Markdown (links, images)
    frames = upload.frames
    if frames > 1:  # nothing analysed nor saved until the reader picks (frame 0 of a glioma volume was saved as
        # "no tumour" before anyone chose)
        chosen = st.number_input(
            f"Frame (0 to {frames - 1}, counted from 0 in the file's stored order)",
            0,
            frames - 1,
            upload.frame,
            key=f"frame-{upload.file_id}",
            placeholder="choose the frame to analyse",
            help="This file holds several frames; each frame analysed is its own saved result. Frames are counted "
            "from 0 in the order the file stores them, as the command line's --frame counts them; the Study page "
            "counts sections from 1 in order of position.",
        )
        if chosen is not None and chosen != upload.frame:
            choose_frame(upload, int(chosen))
            st.rerun()  # the batch summary below changes too
    result = upload.current
    if upload.frame is None and result is not None and result.needs_frame:
        st.info(
            f"This file holds {frames} frames: choose the frame to analyse (nothing is analysed or saved until you "
            "do), or read the whole volume on the Study page, which judges a series by all its sections."
        )
        return
    if result is None or result.view is None:
        message = result.error_message if result is not None else "Not analysed."
        st.error(f"Not analysed: {message}")
        return
    view = result.view
    original, crop, looked, verdict = st.columns([1, 1, 1, 1.3])
    outlined = bool(view.outline) and original.toggle(
        OUTLINE_LABEL, value=True, key=f"outline-{upload.file_id}", help=OUTLINE_HELP
    )
    inline_image(
        original,
        Encoded(view.original_b64(outlined)),
        f"{view.format.upper()} {view.width}×{view.height}"
        + (f" · frame {view.frame}" if view.frame is not None else "")
        + (
            " · region found boxed (refused by the input gate)"
            if view.prediction.gate.decision == "rejected"
            else " · brain region boxed"
        )
        + (" · lesion outlined (magenta)" if outlined else "")
        + edges(view.letters),
        view.letters,
    )
    inline_image(crop, Encoded(view.crop_b64()), f"As the model sees it ({view.crop.shape[0]} px)")
    if view.heat:
        explained = looked.selectbox(
            "Heat map of",
            [PREDICTED, *labels],
            key=f"explain-{upload.file_id}",
            format_func=lambda x: x if x == PREDICTED else pretty(x),
        )
        opacity = looked.slider("Heat map opacity", 0.0, 1.0, 0.45, 0.05, key=f"opacity-{upload.file_id}")
        label = explained if explained != PREDICTED else view.explained or labels[0]
        # another label's map is made when first asked for (all four up front were half a batch's CPU)
        if (blended := view.overlay_b64(label, opacity, _explainer())) is None:
            looked.caption(f"The heat map of {pretty(label)} cannot be made now: the model is not loaded.")
        else:
            inline_image(looked, Encoded(blended), heat_title(pretty(label)))
        looked.caption(HEAT_MEANING)
    with verdict:
        _verdict(result)
    for warning in view.warnings:
        st.warning(warning)
    if view.acquisition:
        with st.expander("Acquisition (DICOM, non-identifying)"):
            st.dataframe(  # plain cells: a table would render markup from the file's header
                pd.DataFrame({"field": list(view.acquisition), "value": list(view.acquisition.values())}),
                hide_index=True,
            )


def _explainer():
    """The served model's explainer, for a heat map made when asked for (None when the model cannot be loaded:
    the map is then not shown, as for a scan without one)."""
    try:
        return resources.current_explainer()
    except ModelError:
        return None


def _stored_scan(view, labels: tuple[str, ...]) -> None:
    """A saved scan's image, crop and heat map, side by side."""
    original, crop, looked = st.columns(3)
    outlined = " · lesion outlined (magenta)" if view.outline else ""
    inline_image(
        original,
        Encoded(view.original_b64(True)),
        f"{view.format.upper()} {view.width}×{view.height}"
        + (f" · frame {view.frame}" if view.frame is not None else "")  # counted as on the Scan page
        + f"{outlined}{edges(view.letters)}",
        view.letters,
    )
    inline_image(crop, Encoded(view.crop_b64()), "As the model sees it")
    label = view.explained or labels[0]
    heat = view.overlay_b64(label, 0.45)
    if heat is None:  # a refused image: the model's attention on it means nothing
        looked.info("No heat map: the input gate refused this image.")
    else:
        inline_image(looked, Encoded(heat), heat_title(pretty(label)))
        looked.caption(HEAT_MEANING)


def _flag_reason(record, classifier, view=None) -> str:
    """Why a single scan was flagged, where the served model's review band tells it (the band is the card's, so
    only for a result of the model served), or refused, where its kept image read again says why (a slice with too
    little brain read as "not a brain MRI"); "" otherwise (a series' reasons are its warnings above)."""
    if record.gate == "rejected" and view is not None and view.prediction.gate.reasons:
        return ": " + "; ".join(view.prediction.gate.reasons)
    if record.gate != "needs_review" or record.kind == "series" or classifier is None:
        return ""
    card = classifier.card
    if (record.model_name, record.model_version) != (card.name, card.version):
        return ""
    if not card.rule.in_review_band(record.tumour_probability):  # flagged by a band this card no longer holds
        return " (when it was analysed; its reason is not kept with the result)"
    return f": its {card.rule.band_reason(record.tumour_probability)}"


def result_panel(opened, labels: tuple[str, ...], classifier=None, explainer=None) -> None:
    """A saved result as the worklist shows it: its image, crop and heat map (a series: its viewer and curve)
    while the pixels are kept, the verdict, the final label (a disagreement stands out) and the review history."""
    record = opened.record
    left, right = st.columns([2.2, 1.3])
    with left:
        if opened.series is not None and classifier is not None:
            st.markdown(verdict_line(opened.series))
            for warning in opened.series.warnings:  # kept with the series: a gap, a file left out...
                st.warning(warning)
            series_panel(opened.series, classifier, explainer, prefix=f"wl-{record.id[:12]}")
        elif opened.view is not None:
            _stored_scan(opened.view, labels)
        else:
            st.info(opened.note or "No image is kept for this result.")
    with right:
        if record.disagrees:
            st.error(
                f"Disagreement: the model said {pretty(record.label)}, the final label is "
                f"{pretty(record.final_label)}.",
                icon=":material/report:",
            )
        st.metric("Model's verdict", verdict_shown(record), help=f"The verdict on this {result_kind(record)}.")
        saved = f"model {record.model_name} {record.model_version} · saved {record.created_at:%Y-%m-%d %H:%M} UTC"
        if record.gate == "rejected":  # what the model made of something that is not a brain MRI means nothing
            st.markdown(saved)
        elif record.kind == "series":  # its score is judged by its own rule: not the probability that it is right
            st.markdown(
                f"Series score **{percent(record.tumour_probability)}** ({SERIES_SCORE}, judged by its series rule) · "
                f"{saved}"
            )
        else:
            st.markdown(
                f"Tumour probability **{percent(record.tumour_probability)}** · {CALL_CONFIDENCE} "
                f"{percent(record.confidence)} · {saved}",
                help=CONFIDENCE_HELP,
            )
            if record.probabilities:  # how close the other types were: "wrong type" is a reason to override
                probability_table(dict(record.probabilities))
        if record.kind == "series":  # saved outlines are not kept: the volume it was saved with
            lesion = stored_volume_line(record.lesion_px, record.lesion_ml)
        else:
            lesion = area_line(record.lesion_px, record.lesion_mm2)
            lesion = None if lesion is None else f"{lesion}, as saved"
        if lesion is not None:  # nothing without a segmenter
            st.markdown(f"**{lesion}**", help=CAVEAT)
            for note in (record.geometry or {}).get("lesion_caveats") or []:  # a lower bound is said with it
                st.caption(f"Lesion volume: {note}.")
        if record.gate == "needs_review" and opened.reviews:  # the flag was answered: no longer a call to act
            st.caption(f"Flagged for review by the model; reviewed since ({count_of(len(opened.reviews), 'review')}).")
        elif record.gate != "accepted":
            st.warning(
                {"needs_review": "Flagged for review", "rejected": "Refused by the input gate"}[record.gate]
                + _flag_reason(record, classifier, opened.view)
            )
        if not opened.reviews:
            st.caption("Not reviewed yet.")
    if opened.reviews:  # the page's width: in the verdict's column the reasons and the note were cut off
        st.markdown("**Reviews** (newest last)")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when (UTC)": f"{r.created_at:%Y-%m-%d %H:%M}",
                        "by": r.reviewer,
                        "action": r.action,
                        "final": pretty(r.final_label),
                        "reasons": ", ".join(map(reason_shown, r.reasons)),
                        "note": r.note,
                    }
                    for r in opened.reviews
                ]
            ),
            hide_index=True,
            width="stretch",
        )
