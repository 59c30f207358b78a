"""Audit trail page: every event (sign-ins, uploads, opened results, reviews, exports, account changes), filtered
and paged in the database, newest first, with the chain checked from the last verified event on; admins filter by
target and export the matching events as CSV (itself an event)."""

from datetime import UTC, datetime, time, timedelta

import pandas as pd
import streamlit as st

from core.errors import StoreError
from core.services import audit
from core.services.access import AUDIT_EXPORT, AUDIT_READ, Actor, allowed
from ui import resources
from ui.auth import audited_download, callback_actor
from ui.page import setup_page
from ui.wording import count_of

actor = setup_page("Audit trail", AUDIT_READ)
st.title("Audit trail")


@st.cache_data(show_spinner="Verifying the audit chain…", max_entries=8, ttl=60)
def chain_check(head: tuple[int, str] | None, source: str, _actor: Actor) -> tuple[bool, int, str | None, int]:
    """The events after the last verified one re-hashed (the whole chain the first time, or when the verified point
    no longer matches), at most once a minute per head. ``python -m core audit verify`` always checks everything."""
    del head, source  # the cache key
    check = audit.verify_new(store, _actor)
    return check.intact, check.events, check.problem, check.checked


def check_everything() -> None:
    """Every event re-hashed now (an edit before the last verified event is found only so)."""
    reader = callback_actor(AUDIT_READ)
    if reader is None:
        return
    try:
        check = audit.full_check(resources.current_store(), reader)
    except StoreError as error:
        st.session_state["audit_full"] = (False, f"The audit trail cannot be read: {error}")
        return
    chain_check.clear()  # the verified point moved (or went back to the start)
    st.session_state["audit_full"] = (
        check.intact,
        f"Every one of the {check.events:,} events re-hashed: the chain is intact."
        if check.intact
        else f"The audit chain does not hold: {check.problem}.",
    )


def first_page() -> None:
    """Back to the newest events (a filter changed, or the reader asked)."""
    st.session_state["audit_pages"] = []


def older(after: tuple[datetime, int]) -> None:
    """The page after the one shown, which ended at ``after`` (time and sequence number)."""
    st.session_state["audit_pages"] = [*st.session_state.get("audit_pages", []), after]


try:
    store = resources.current_store()
    intact, count, problem, checked = chain_check(audit.chain_head(store, actor), store.describe(), actor)
except StoreError as error:
    st.error(f"The audit trail cannot be read: {error}")
    st.stop()
if full := st.session_state.pop("audit_full", None):
    (st.success if full[0] else st.error)(full[1])
elif not intact:
    st.error(f"The audit chain does not hold: {problem}.")
elif checked >= count:
    st.success(f"Every one of the {count:,} events re-hashed: the chain is intact.", icon=":material/verified:")
else:  # "intact" over a check of the newest events only: an edit to an older one stayed green
    st.success(
        f"The chain of {count:,} events holds from the last check on: {count_of(checked, 'event')} since "
        "re-hashed, its end matches its head. Edits to older events are found by checking every event.",
        icon=":material/verified:",
    )
st.button("Check every event", on_click=check_everything, key="audit_check_all")

controls = st.columns(5 if audit.sees_targets(actor) else 4)
action = controls[0].text_input(
    "Action", placeholder="e.g. review, sign_in_failed", key="audit_action", on_change=first_page
)
who = controls[1].text_input("Account", key="audit_who", on_change=first_page)
today = datetime.now(UTC).date()
days = controls[2].date_input(
    "Dates (UTC)", (today - timedelta(days=30), today), key="audit_dates", on_change=first_page
)
start_day, end_day = (days[0], days[-1]) if isinstance(days, tuple | list) and days else (today, today)
filters = {  # an action as its events name it: "Review " or "sign in failed" matched nothing, unsaid
    "action": "_".join(action.lower().split()) or None,
    "who": who.strip() or None,
    "start": datetime.combine(start_day, time(0), UTC),
    "end": datetime.combine(end_day + timedelta(days=1), time(0), UTC),
}
if audit.sees_targets(actor):
    target = controls[3].text_input(
        "Target", placeholder="result id or account", key="audit_target", on_change=first_page
    )
    filters["target"] = target.strip() or None

pages = st.session_state.setdefault("audit_pages", [])  # where each page after the first starts
try:
    matching = audit.count(store, actor, **filters)
    events = audit.events(store, actor, **filters, before=pages[-1] if pages else None, limit=audit.PAGE)
except StoreError as error:
    st.error(f"The audit trail cannot be read: {error}")
    st.stop()
# page numbers, not positions: events added since the first page shift every position (keyset paging)
shown = f"{len(events):,} on page {len(pages) + 1}, newest first" if events else "none on this page"
st.caption(f"{matching:,} {'event matches' if matching == 1 else 'events match'}; showing {shown}.")
st.dataframe(
    pd.DataFrame(
        [
            {
                "seq": e.seq,
                "time (UTC)": f"{e.at:%Y-%m-%d %H:%M:%S}",
                "account": e.actor,
                "role": e.role,
                "action": e.action,
                "target": e.target or "",  # whole: the Target filter matches it exactly (cut, it could not be copied)
                "detail": ", ".join(f"{k}={v}" for k, v in e.detail.items()),
            }
            for e in events
        ]
    ),
    hide_index=True,
    width="stretch",
    height=600,  # about 16 rows of the page's 500 (it showed 10); the detail column as wide as the page allows
    column_config={"detail": st.column_config.TextColumn("detail", width="large")},
)
paging = st.columns(2)
paging[0].button("Newest", on_click=first_page, disabled=not pages, key="audit_newest")
paging[1].button(  # a short page is the last (a count made before new events arrived once offered a wrap-round)
    "Older",
    on_click=older,
    args=((events[-1].at, events[-1].seq or 0) if events else None,),
    disabled=len(events) < audit.PAGE,
    key="audit_older",
)


if allowed(actor, AUDIT_EXPORT):
    controls[-1].download_button(
        "Export (CSV)",
        audited_download(store, actor, AUDIT_EXPORT, lambda current: audit.export_csv(store, current, filters)),
        f"audit-{today:%Y%m%d}.csv",
        "text/csv",
    )
