"""Worklist page: the radiologist reads the model's verdicts, unreviewed first, and agrees or overrides each one.

Opening a result shows its stored, de-identified image with the crop and heat map; every open and every review
is an audit event; reviews are kept as history (the latest is the final label). Disagreements are marked.
"""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from core.errors import InvalidRecord, ModelError, ReviewedMeanwhile, StoreError, UnauditedChange
from core.services import reviews
from core.services.access import REVIEW, WORKLIST
from core.services.reviews import LISTED, REASON_CODES, WorklistQuery, review_labels
from ui import resources
from ui.auth import callback_actor
from ui.opened import opened_result
from ui.page import setup_page
from ui.render import result_panel
from ui.selection import chosen_id, table_key
from ui.wording import (
    SCORE_COLUMN,
    count_of,
    flag_shown,
    pretty,
    probability_shown,
    reason_shown,
    result_kind,
    series_kind,
    verdict_shown,
)

actor = setup_page("Worklist", WORKLIST)
st.title("Worklist")
CONFLICT = "wl_conflict"  # the result whose review was refused: another reader reviewed it meanwhile
MOVED = "wl_moved"  # moves by Previous / Next: the table is drawn anew, its ticked row cleared


AT, AFTER = "wl_at", "wl_after"  # the open result's last row; (a result reviewed here, the row that followed it)


def open_row(result_id: str | None) -> None:
    """Previous / Next: open ``result_id`` (a callback, before the page runs: the list's ticked row would win)."""
    if result_id is not None:
        st.session_state["wl_chosen"] = result_id
        st.session_state[MOVED] = st.session_state.get(MOVED, 0) + 1


def step_target(ids: list[str], open_id: str, to: int) -> str | None:
    """The result Previous (``to`` -1) or Next (1) opens: the row above or below the open one; after a review here,
    Next is the row that followed it then (reviewed, it moved down the list, the unread ones above it); once it has
    left the list (reviewed by a colleague), the rows around the place it had (both buttons were disabled)."""
    reviewed, after = st.session_state.get(AFTER) or (None, None)
    if to > 0 and reviewed == open_id and after in ids and after != open_id:
        return after
    if open_id in ids:
        st.session_state[AT] = at = ids.index(open_id)
        return ids[at + to] if 0 <= at + to < len(ids) else None
    place = st.session_state.get(AT)
    if place is None or not ids:
        return None
    at = min(place, len(ids)) - (1 if to < 0 else 0)  # the row that took its place, or the one above it
    return ids[at] if 0 <= at < len(ids) else None


REVIEWED_HERE = "wl_reviewed"  # the result this reader last reviewed on a list that keeps reviewed results
try:
    store = resources.current_store()
    classifier, explainer = resources.current_classifier(), resources.current_explainer()
except (StoreError, ModelError) as error:
    st.error(f"The worklist cannot be shown: {error}")
    st.stop()

AGES = {"last 24 hours": 1, "last 7 days": 7, "last 30 days": 30, "any time": None}
SHOW = {"not yet reviewed": False, "reviewed": True, "all": None}
GATES = {"needs review": "needs_review", "refused by the input gate": "rejected", "accepted": "accepted"}

filters = [*st.columns([1, 1.4, 1.2]), *st.columns([1, 1.4, 1.2])]  # in one row, at 1400 px "not yet reviewe"
show = filters[0].selectbox("Show", list(SHOW), key="wl_show")
verdicts = filters[1].multiselect(  # "tumour, type uncertain" too: a verdict of a card with a subtype rule
    "Model verdict",
    review_labels(classifier.card.labels),
    format_func=pretty,
    key="wl_verdicts",
    help="The model's call: a reviewed result whose final label differs is listed under the model's (Disagreements).",
)
gates = filters[2].multiselect("Flag", list(GATES), key="wl_gates")
age = filters[3].selectbox("Age", list(AGES), index=1, key="wl_age")
patient = filters[4].text_input("Patient reference", key="wl_patient", help="Typed as on the Scan page.")
disagreements = filters[5].toggle("Disagreements", key="wl_disagreements", help="Final label differs from the model")
days = AGES[age]
reference = resources.patient_reference(patient) if patient.strip() else None
if patient.strip() and reference is None:  # never an unfiltered list under a patient's name
    st.error("Patient references are disabled on this installation (no key is configured): no patient filter.")
    st.stop()
query = WorklistQuery(
    reviewed=SHOW[show],
    labels=tuple(verdicts),
    gates=tuple(GATES[g] for g in gates),
    patient_ref=reference,
    since=datetime.now(UTC) - timedelta(days=days) if days else None,
    disagreements=disagreements,
)
seen_key = f"worklist-read-{reference}"  # the patient's results this session's audited reads listed
try:  # a patient's list: audited when it shows results not listed before in this session, as History
    seen = st.session_state.get(seen_key)
    results = reviews.worklist(store, actor, query, LISTED + 1, seen=seen)
    if reference is not None:
        st.session_state[seen_key] = (seen or set()) | {record.id for record in results[:LISTED]}
except StoreError as error:
    st.error(f"The results database cannot be read: {error}")
    st.stop()


def older_match(query: WorklistQuery, **changes) -> bool:
    """Whether results older than the age filter match the rest, with ``changes`` (False when the database cannot
    say)."""
    try:
        return bool(reviews.worklist(store, actor, replace(query, since=None, before=query.since, **changes), 1, False))
    except StoreError:
        return False


if not results:
    st.info("Nothing to read with these filters.")
    if disagreements and SHOW[show] is False:  # a disagreement is a review: never among the unreviewed
        st.caption("Disagreements are reviewed results: choose Show: reviewed or all to list them.")
    elif days and older_match(query):
        st.caption(f"Older results match these filters: choose Age: any time to see them (the list shows the {age}).")
    st.stop()
if days and SHOW[show] is not True and older_match(query, reviewed=False):  # unread work never ages out unseen
    st.warning(
        f"Results older than the {age.removeprefix('last ')} match these filters and are not yet reviewed: choose "
        "Age: any time to read them.",
        icon=":material/history:",
    )
order = "not yet reviewed first, then reviewed; within each flagged, then the rest, then refused; newest first"
more = len(results) > LISTED  # read one more than shown: the list never stops short without saying so
results = results[:LISTED]

table = pd.DataFrame(
    [
        {
            "review": "⚠ disagrees" if r.disagrees else ("✓ reviewed" if r.review_count else "to read"),
            "time (UTC)": r.created_at.strftime("%Y-%m-%d %H:%M"),
            "verdict": verdict_shown(r),
            "flag": flag_shown(r),  # beside the verdict: at 1,024 px it was off-screen, a flagged "No tumour" plain
            SCORE_COLUMN: probability_shown(r),
            "kind": series_kind(r) if r.kind == "series" else "scan",  # two series of a study told apart
            "patient ref.": r.patient_ref[:12] if r.patient_ref else "",  # the prefix the PDF prints: rows of one
            # patient, and a report, matched (nothing on the list tied a result to anyone)
            "final label": pretty(r.final_label) if r.final_label else "",
            "reviewed by": r.reviewer or "",
            "model": r.model_version,
        }
        for r in results
    ]
)
if more:  # cut in the list's order, not by age: "older ones" were once said where newer reviewed ones were cut
    st.warning(
        f"Showing the first {LISTED} results in this order ({order}): more match these filters and are not in "
        "this list. Narrow it (age, verdict, flag) to reach them.",
        icon=":material/list:",
    )
st.caption(f"{count_of(len(results), 'result')} · {order}.")
if message := st.session_state.pop("review_saved", None):  # above the list: the next result opens below it; and
    st.success(message)  # where the reader is, far below the list (neither was in view after a review)
    st.toast(message, icon=":material/task_alt:")
if message := st.session_state.pop("review_error", None):
    st.error(message)
    st.toast(message, icon=":material/error:")
ids = [r.id for r in results]
picked = st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    on_select="rerun",
    selection_mode="single-row",
    key=f"{table_key('wl_table', ids)}-{st.session_state.get(MOVED, 0)}",  # a new one (no row ticked) after a move
    height=min(38 * (len(table) + 1), 360),
    column_config={  # "needs r" at 1,500 px; "series 1 (DI" at every width
        "flag": st.column_config.TextColumn("flag", width="medium"),
        "kind": st.column_config.TextColumn("kind", width="large"),
    },
)
before = st.session_state.get("wl_chosen")
chosen_key, note = chosen_id(ids, picked.selection.rows if picked and picked.selection else [], before)
filters_now = (show, tuple(verdicts), tuple(gates), age, reference, disagreements)
filters_changed = st.session_state.get("wl_filters", filters_now) != filters_now
st.session_state["wl_filters"] = filters_now
if note and before is not None and before == st.session_state.get(CONFLICT):  # left the list under the reader's
    chosen_key, note = before, None  # eyes, reviewed by another reader: kept open, with their review
    st.info("Another reader reviewed this result meanwhile, so it has left this list; it stays open here.")
elif note and before is not None and before == st.session_state.get(REVIEWED_HERE):  # its review moved it past
    chosen_key, note = before, None  # the cut: the reader's own review never opens another result under them
    st.info(
        "This result, just reviewed, is not in this list now (its review moved it past the end, or the filters "
        "changed); it stays open here."
    )
elif note and before is not None and not filters_changed:  # the list changed under the reader: another result
    chosen_key, note = before, None  # opened in its place, and Shift+A then signed the one nobody had looked at
    st.info(
        "The result open here has left this list (another reader reviewed it, or newer results moved it past the "
        "list's end); it stays open here. Choose a row to open another."
    )
st.session_state["wl_chosen"] = chosen_key
if chosen_key != st.session_state.get(CONFLICT):  # the reader moved on
    st.session_state.pop(CONFLICT, None)
if chosen_key != st.session_state.get(REVIEWED_HERE):
    st.session_state.pop(REVIEWED_HERE, None)
if note:
    st.info(note)
try:  # opening is an audit event, once while the session keeps it; its reviews are read again on every run
    opened = opened_result(store, actor, chosen_key, classifier, explainer)
except (StoreError, InvalidRecord) as error:
    st.error(f"The result cannot be opened right now: {error}")
    st.stop()
chosen = opened.record  # as it stands now (it may be off the list: see above)
st.divider()
# which result is open, named as its row is: below the list, nothing told it (no row is ticked when the first
# opens), and Shift+A signs what is open
where = f"row {ids.index(chosen.id) + 1} of the list" if chosen.id in ids else "not in the list now"
state = "reviewed" if chosen.review_count else "to read"
jump = " · [to the review ↓](#review)" if chosen.kind == "series" else ""  # below a series' viewer, 2,000 px down
st.markdown(f"**Open:** {result_kind(chosen)} saved {chosen.created_at:%Y-%m-%d %H:%M} UTC · {state} · {where}{jump}")
steps = st.columns([1, 1, 2])  # the list's rows from the keyboard too: the table's own cursor never opened another
for column, label, to, keys in ((steps[0], "Previous result", -1, "shift+p"), (steps[1], "Next result", 1, "shift+n")):
    target = step_target(ids, chosen.id, to)
    column.button(
        label,
        key=f"wl-step{to}",
        disabled=target is None,
        on_click=open_row,
        args=(target,),
        shortcut=keys,
        help=f"Open the {'row above' if to < 0 else 'row below'} in the list (keyboard: {keys.title()}).",
    )
result_panel(opened, classifier.card.labels, classifier, explainer)


def save_review(final_label: str, reasons: list[str], note: str, seen: int | None) -> bool:
    """Save the review against the ``seen`` reviews the panel showed: one saved by another reader since is never
    replaced unseen (the page says so and keeps the result open with theirs). A button's callback: it runs before
    the page script, with the names of the run that drew the button."""
    reviewer = callback_actor(REVIEW)  # run before the page's own sign-in check: the session as it stands now
    if reviewer is None:
        return False
    try:
        reviews.review_result(store, reviewer, chosen.id, final_label, reasons, note, seen_reviews=seen)
    except (InvalidRecord, StoreError) as error:
        st.session_state["review_error"] = (
            str(error) if isinstance(error, UnauditedChange) else f"Review not saved: {error}"
        )
        if isinstance(error, ReviewedMeanwhile):  # the colleague's review is what the reader must see next
            st.session_state[CONFLICT] = chosen.id
        return False
    st.session_state.pop(CONFLICT, None)  # looked at again and saved: nothing is kept open on its account
    after = next(iter(ids[ids.index(chosen.id) + 1 :]), None) if chosen.id in ids else None  # the row below it
    if SHOW[show] is False:  # reviewed, it leaves this list: the next one opens, as the reader expects (the one
        st.session_state["wl_chosen"] = after  # below it: the first opened, above where a Next walk had reached)
    else:  # it stays listed, but may move past the list's cut: kept open all the same
        st.session_state[REVIEWED_HERE] = chosen.id
        st.session_state[AFTER] = (chosen.id, after)
    saved = f"{chosen.created_at:%Y-%m-%d %H:%M} UTC, model {verdict_shown(chosen)}"
    st.session_state["review_saved"] = f"Review saved: {pretty(final_label)} for the result of {saved}."
    return True


def save_override(seen: int | None) -> None:
    """The override form's values saved as a review; the form starts empty again only when it was saved (kept
    after a refusal). Values are set back, not deleted: a deleted widget value never reaches the browser."""
    form = {field: f"override-{field}-{chosen.id}" for field in ("final", "reasons", "note")}
    state = st.session_state
    if state[form["final"]] is None:  # no label is chosen for the reader: one press once recorded "Glioma"
        state["review_error"] = "Review not saved: choose the final label first."
        return
    if save_review(state[form["final"]], list(state[form["reasons"]]), state[form["note"]], seen):
        state[form["final"]], state[form["reasons"]], state[form["note"]] = None, [], ""


KEYS = "Keyboard: Shift+A (two keys, so that a stray keypress never signs a review)"
FLAGGED = "Flagged for review: agreeing takes a click, after reading the images (no keyboard shortcut)."
st.subheader("Review", anchor="review")
agree, override = st.columns([1, 2])
refused = chosen.gate == "rejected"  # the class the model picked for it is nothing to agree with
if refused:
    agree.caption(
        "The input gate refused this image: there is no verdict to agree with. Record what it shows as a final "
        "label (with the reason 'image unsuitable' when it is not a brain MRI)."
    )
else:
    # once reviewed, agreeing is a change of the final label: no shortcut (two stray keys on a result overridden
    # to "No tumour" set its final label back to the model's) and the label it replaces is named; nor for a result
    # flagged for review (a series called "No tumour" beside two sections at 0.99 was signed by one Shift+A)
    final = opened.record.final_label if opened.record.review_count else None
    flagged = chosen.gate == "needs_review" and not final
    agree.button(
        f"Agree: {pretty(chosen.label)}",
        type="secondary" if final else "primary",
        key=f"agree-{chosen.id}",  # one button per result: a late press never agrees the result opened after it
        shortcut=None if final or flagged else "shift+a",
        on_click=save_review,
        args=(chosen.label, [], "", opened.record.review_count),
        help="Reviewed already: a press records a new review." if final else FLAGGED if flagged else KEYS,
    )
    if final and final != chosen.label:  # under the button: in its label it was cut off in the narrow column
        agree.caption(f"Agreeing replaces the final label {pretty(final)}.")
    elif flagged:
        agree.caption(FLAGGED)
with override.form(f"override-{chosen.id}", border=True):  # cleared when saved, never when refused
    labels = review_labels(classifier.card.labels, chosen)
    st.selectbox(
        "Override: final label",
        labels,
        index=None,
        placeholder="Choose what the image shows",
        format_func=pretty,
        key=f"override-final-{chosen.id}",
    )
    st.multiselect(
        "Reasons",
        REASON_CODES,
        format_func=reason_shown,
        key=f"override-reasons-{chosen.id}",
        select_all=False,  # "Select all" recorded every reason at once, contradicting each other (missed, false alarm)
    )
    st.text_input("Note (optional; no patient names)", max_chars=500, key=f"override-note-{chosen.id}")
    st.form_submit_button("Save override", on_click=save_override, args=(opened.record.review_count,))
