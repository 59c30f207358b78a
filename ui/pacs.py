"""The Study page's "From the PACS" part: search the configured PACS for MR studies, pick one, pull it into memory
and analyse it; it is then kept, shown and saved exactly as an upload (:mod:`ui.study`), and its report can be sent
back to the PACS.

Patient names and IDs from the PACS are shown on this screen and held in the session's memory only: never stored
(a saved series keeps the keyed reference of the PACS patient ID) and never logged. The connection is built per
action (cheap). The services decide who may use the PACS: whatever a role sees here, a refusal is shown with its
message, as is every PACS failure (unreachable, refused credentials, no MR series, too large, malformed).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import date
from typing import Any

import streamlit as st

from core.config import PacsSettings, pacs_settings
from core.errors import (
    AccessDenied,
    InvalidRecord,
    PacsAnotherPatient,
    PacsError,
    PacsStudyChanged,
    ReviewedMeanwhile,
    StoreError,
)
from core.pacs.client import SEARCH_LIMIT, StudyHit
from core.pacs.objects import ModelFacts, uid_root
from core.services import pacs as pacs_service
from core.services.access import PACS, Actor
from core.services.reviews import review_labels
from ui import resources
from ui.auth import callback_actor
from ui.study import CURRENT, LABELS, current, keep, pacs_name, pacs_study_uid, studies, unsaved
from ui.wording import count_of, plain, pretty

logger = logging.getLogger("btd.ui")
HITS, PULLED, SENT, SHOWN_REVIEWS = "pacs_hits", "pacs_pulled", "pacs_sent", "pacs_shown_reviews"


def settings() -> PacsSettings | None:
    """The configured PACS (environment or secrets); None when there is none."""
    return pacs_settings(resources.secrets())


def _connect() -> Any:
    configured = settings()
    if configured is None:
        raise PacsError("No PACS is configured.")
    return pacs_service.connect(configured)


def _day(value: str) -> str:
    """A DICOM date (YYYYMMDD) as 2026-12-01; anything else as it came."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value or "—"


def _dicom_dates(chosen: Any) -> tuple[str | None, str | None]:
    """A date range widget's value as DICOM dates (one date chosen: from that day on)."""
    days = list(chosen) if isinstance(chosen, list | tuple) else [chosen] if chosen else []
    as_dicom = [day.strftime("%Y%m%d") for day in days if isinstance(day, date)]
    return (as_dicom[0] if as_dicom else None), (as_dicom[1] if len(as_dicom) > 1 else None)


def pacs_panel(actor: Actor, classifier: Any, key: bytes | None) -> None:
    """The search form, the studies found, and the study to pull and analyse."""
    st.caption(
        "MR studies in the PACS. A study is pulled into memory only (nothing of its images is written to disk), "
        "analysed and saved as an upload is, under the keyed reference of its PACS patient ID."
    )
    if (configured := settings()) is not None and configured.unencrypted:
        st.warning(
            "The PACS's address is plain http: the studies' images and patients' names"
            + (", and the PACS password on every request," if configured.password else "")
            + " cross the hospital network unencrypted. Ask the administrator to configure its https address."
        )
    _search_form(actor, key)
    hits: list[StudyHit] | None = st.session_state.get(HITS)
    if hits is None:
        return
    if not hits:
        st.info("No MR study in the PACS matches this search.")
        return
    _hits_table(hits)
    if len(hits) >= SEARCH_LIMIT:  # the PACS's first matches, in its own order: today's study may not be among them
        st.warning(
            f"The PACS lists at most {SEARCH_LIMIT} studies per search: more match, and newer ones may be left out. "
            "Narrow the search (a patient ID or a shorter date range)."
        )
    chosen = st.selectbox(
        "Study to analyse",
        range(len(hits)),
        format_func=lambda i: f"{i + 1} · {study_label(hits[i])}",  # two patients' alike read the same
        key="pacs_pick",
    )
    shown = current()
    if pacs_study_uid(shown) is not None and shown != pacs_name(hits[chosen or 0].study_uid):
        st.caption("The study on the page below is another one: press Analyse to read the chosen one.")
    if st.button("Analyse the chosen study", type="primary", key="pacs_analyse"):
        _analyse(actor, hits[chosen or 0], classifier, key)


def study_label(hit: StudyHit) -> str:
    """A found study in words: its date, description and patient, as the table of studies found shows them."""
    patient = f"{hit.patient_name.replace('^', ' ').strip() or '—'} ({hit.patient_id or 'no ID'})"
    return f"{_day(hit.date)} · {hit.description or 'no description'} · {patient}"


def _search_form(actor: Actor, key: bytes | None) -> None:
    with st.form("pacs_search", border=False):
        columns = st.columns([1, 1.2, 1.4])
        patient_id = columns[0].text_input("Patient ID", key="pacs_patient_id")
        dates = columns[1].date_input(
            "Study dates",
            value=(),
            min_value=date(1900, 1, 1),
            format="YYYY-MM-DD",
            key="pacs_dates",
            help="A range; one date alone: from that day on. Empty: any date.",
        )
        description = columns[2].text_input("Description contains", key="pacs_description")
        submitted = st.form_submit_button("Search the PACS")
    if not submitted:
        return
    start, end = _dicom_dates(dates)
    try:
        store = resources.current_store()
    except StoreError as error:  # a search shows patients' names: not without its audit event
        st.error(f"The PACS is not searched while the audit trail is unavailable: {error}")
        return
    try:
        with st.spinner("Searching the PACS…"):
            hits = pacs_service.search(
                _connect(),
                actor,
                store,
                key,
                patient_id=patient_id.strip() or None,
                start=start,
                end=end,
                description=description.strip() or None,
            )
    except (PacsError, AccessDenied) as error:
        st.session_state.pop(HITS, None)
        st.error(str(error))
        return
    except StoreError as error:  # found, but not shown: a search shows patients' names, never unaudited
        st.session_state.pop(HITS, None)
        st.error(f"The studies found are not shown: the search's audit event could not be written ({error}).")
        return
    st.session_state[HITS] = hits


def _hits_table(hits: list[StudyHit]) -> None:
    """The studies found, with their patient's name and ID (on screen only)."""
    rows = [
        {
            "#": number,
            "date": _day(hit.date),
            "description": hit.description or "—",
            "patient": hit.patient_name.replace("^", " ").strip() or "—",
            "patient ID": hit.patient_id,
            "series": hit.series,
            "images": hit.instances,
        }
        for number, hit in enumerate(hits, start=1)
    ]
    st.dataframe(rows, hide_index=True, width="stretch")  # its own height: up to ten rows, then it scrolls


def _analyse(actor: Actor, hit: StudyHit, classifier: Any, key: bytes | None) -> None:
    """Pull the study into memory, analyse and save it as an upload, and put it on the page."""
    try:
        store = resources.current_store()
    except StoreError as error:  # a pull reads a patient's images: not without its audit event
        st.error(f"The study is not pulled while the results database and audit trail are unavailable: {error}")
        return
    results = studies()
    try:
        # the study's image count holds every series (our own report and key images too): not said as pulled
        with st.spinner("Pulling the study's MR images from the PACS and analysing them…"):
            st.session_state.pop(CURRENT, None)  # the study shown before leaves the page: under a refusal, it read
            # as the chosen one (another patient's verdict under a study refused as two patients')
            pulled = pacs_service.pull_and_analyse(_connect(), actor, hit.study_uid, classifier, store, key)
            if pulled.outcome.error_code:
                st.error(f"This study cannot be analysed. {pulled.outcome.error_message}")
                return
            if (actor := callback_actor(PACS)) is None:  # disabled or demoted during the pull: nothing saved, and
                st.rerun()  # the run that follows shows the sign-in form or the refusal
            study = pacs_service.save_pulled(pulled, store, actor=actor, images=resources.image_store(store), key=key)
            results[pacs_name(hit.study_uid)] = study  # before any Streamlit call (a rerun asked for stops there)
            st.session_state.setdefault(LABELS, {})[pacs_name(hit.study_uid)] = study_label(hit)
            st.session_state[PULLED] = pulled  # one study's analyses at most: what a send needs
            keep(pacs_name(hit.study_uid), study)
    except (PacsError, AccessDenied, StoreError) as error:  # the audit of a pull fails with the database too
        st.error(str(error))
        return
    st.session_state.setdefault(SENT, {}).pop(hit.study_uid, None)
    st.session_state.pop(SHOWN_REVIEWS, None)  # a new analysis: its reviews are read afresh, nobody's "since"
    st.rerun()  # drawn again with the study below


def send_panel(actor: Actor, name: Any, classifier: Any, key: bytes | None) -> None:
    """For a study from the PACS: send its report and key images back (again: nothing new is stored)."""
    study_uid = pacs_study_uid(name)
    if study_uid is None:
        return
    pulled = st.session_state.get(PULLED)
    if pulled is None or pulled.study_uid != study_uid:
        st.caption("To send this study's report to the PACS, analyse it again from the PACS.")
        return
    study = studies().get(name)
    if study is not None and unsaved(study):  # as the command line and the watch: no report for a study that is
        # on nobody's worklist (a reader in the PACS would act on a result no one here can review)
        st.caption(
            "Not sendable yet: a series of this study is not saved. Press 'Analyse the chosen study' again once the "
            "database is back (its saved series answer 'already saved'), then send."
        )
        return
    try:  # the same images saved for another patient, or from another study: refused by the service too; said
        refusal = pacs_service.not_sendable(resources.current_store(), actor, pulled, key)  # before a label is chosen
    except StoreError as error:
        st.error(f"Reports cannot be sent right now: {error}")
        return
    if refusal is not None:
        st.warning(f"Not sendable: {refusal}", icon=":material/warning:")
        return
    try:
        uid_root()  # the site's UID root, before a reader reviews for a send that would fail
    except PacsError as error:
        st.error(f"Reports cannot be sent: {error}")
        return
    sent: dict[str, int] = st.session_state.setdefault(SENT, {})
    so_far = st.container()  # the study's reviews so far, above the choice of a final label
    final = st.selectbox(
        "Your final label (optional)",
        [None, *review_labels(classifier.card.labels)],
        format_func=lambda label: "none yet: send the report as preliminary" if label is None else pretty(label),
        key=f"pacs_final_label-{hashlib.sha256(study_uid.encode()).hexdigest()[:16]}",  # one per study: a label
        # chosen for the last study stayed chosen for the next (a rerun stops before stale widgets are cleared),
        # and one press sent it as this study's final report
        help="Recorded as your review of each series (as on the Worklist); the report sent is then the final "
        "version, which replaces the preliminary one in the PACS.",
    )
    ids = _saved_ids(name)
    shown = st.session_state.get(SHOWN_REVIEWS)  # the review counts the last run put on screen: a review is
    seen = shown[1] if shown and shown[0] == study_uid else None  # saved against those (as on the Worklist)
    pressed = st.button(
        "Send to PACS",
        key="pacs_send",
        help="The report (a DICOM Structured Report) and the key images go into this study in the PACS. "
        "Sending again stores nothing new.",
    )
    if pressed:
        _send(actor, pulled, classifier, key, sent, final, ids, seen)
    counts = _reviews_so_far(so_far, actor, ids)
    # a colleague's review since the last run (not this run's own send, kept when the PACS then failed; not a series
    # added since): the box above changed quietly while a label was being chosen, and a send went over it unwarned
    if not pressed and seen and counts and any(seen.get(rid, n) != n for rid, n in counts.items()):
        so_far.warning("Another review of this study was saved since you last looked: read it above before sending.")
    st.session_state[SHOWN_REVIEWS] = (study_uid, counts)
    if study_uid in sent:
        stored = sent[study_uid]
        st.success(
            f"Sent: the PACS holds {count_of(stored, 'object')} from this analysis (the report and "
            f"{count_of(stored - 1, 'key image')}).",
            icon=":material/check_circle:",
        )


def _reviews_so_far(box: Any, actor: Actor, result_ids: Sequence[str]) -> dict[str, int] | None:
    """Say in ``box`` how the study's saved series stand reviewed (read after any send of this run); returns each
    one's number of reviews (None when they cannot be read: a review then is not checked against them)."""
    if not result_ids:
        return None
    try:
        found = pacs_service.study_reviews(resources.current_store(), actor, result_ids)
    except (StoreError, AccessDenied):
        box.caption("The reviews of this study cannot be read right now.")
        return None
    latest = Counter(
        (history[-1].final_label, history[-1].reviewer, f"{history[-1].created_at:%Y-%m-%d %H:%M} UTC")
        for _, history in found.values()
        if history
    )
    if latest:
        box.info(
            "Reviewed already (each series' latest review): "
            + "; ".join(
                f"{pretty(label)} by {plain(reviewer)}, {when} ({n} series)"
                for (label, reviewer, when), n in sorted(latest.items(), key=lambda item: item[0][2])
            )
            + ". A final label chosen here is recorded as a new review of each series.",
            icon=":material/rate_review:",
        )
    return {rid: count for rid, (count, _) in found.items()}


def _saved_ids(name: Any) -> list[str]:
    """The saved results of the study on the page (what a review applies to)."""
    study = studies().get(name)
    return [view.record.id for view in (study.views if study else ()) if view.record is not None]


def _send(
    actor: Actor,
    pulled: Any,
    classifier: Any,
    key: bytes | None,
    sent: dict[str, int],
    final_label: str | None = None,
    result_ids: Sequence[str] = (),
    seen: dict[str, int] | None = None,
) -> None:
    card = classifier.card
    model = ModelFacts.of(card)
    try:
        store = resources.current_store()
    except StoreError as error:  # a send that cannot be audited is not made
        st.error(f"Not sent: the results database is unavailable, so the send could not be audited ({error}).")
        return
    if final_label is not None:  # the review goes into the records first: a PDF made before it would leave it out
        st.session_state.pop("study_pdf", None)
    try:
        with st.spinner("Sending the report to the PACS…"):
            if final_label is None:
                stored = pacs_service.send_results(_connect(), actor, pulled, model, store, key)
            else:
                stored = pacs_service.review_and_send(
                    _connect(), actor, pulled, model, store, key, final_label, result_ids, seen
                )
    except ReviewedMeanwhile as error:  # a colleague reviewed a series since this page was drawn: shown above now
        sent.pop(pulled.study_uid, None)
        st.error(f"Not sent: {error} Their review is shown above; choose your final label again.")
        return
    except PacsStudyChanged as error:  # trying again cannot help: the analysis is of the study as it was
        sent.pop(pulled.study_uid, None)
        st.error(f"Not sent: {error} Press Analyse the chosen study again.")
        return
    except (InvalidRecord, PacsAnotherPatient) as error:  # a result gone, or filed for another patient: no retry
        sent.pop(pulled.study_uid, None)
        st.error(f"Not sent: {error}")
        return
    except (PacsError, AccessDenied, StoreError) as error:
        sent.pop(pulled.study_uid, None)
        st.error(f"Not sent: {error} Press Send to PACS to try again.")
        return
    except Exception as error:  # building the report failed: a message, never a traceback
        logger.error("event=pacs_send_failed code=internal_error error=%s", type(error).__name__)
        sent.pop(pulled.study_uid, None)
        st.error("Not sent: the report could not be made. Press Send to PACS to try again.")
        return
    sent[pulled.study_uid] = len(stored)
    if final_label is not None:  # the study above was drawn before this review: drawn again with it (the page read
        st.session_state.pop(SHOWN_REVIEWS, None)  # the previous final label until the next full run), and this
        st.rerun()  # review is no colleague's to warn of
