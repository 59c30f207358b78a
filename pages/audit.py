"""Audit trail page: every event (sign-ins, uploads, opened results, reviews, exports, account changes), filtered,
with the chain verified; admins export it as CSV (itself an event)."""

from datetime import UTC, datetime, time, timedelta

import pandas as pd
import streamlit as st

from core.errors import StoreError
from core.services import audit
from core.services.access import AUDIT_EXPORT, AUDIT_READ, allowed
from ui import resources
from ui.page import setup_page

actor = setup_page("Audit trail", AUDIT_READ)
st.title("Audit trail")


@st.cache_data(show_spinner="Verifying the audit chain…", max_entries=8, ttl=60)
def chain_check(head: tuple[int, str] | None, source: str) -> tuple[bool, int, str | None]:
    """The whole chain verified at most once a minute per head (a new event, a new check): re-hashing 200,000
    events on every rerun took seconds. ``python -m core audit verify`` always checks everything."""
    del head, source  # the cache key
    check = audit.verify(store)
    return check.intact, check.events, check.problem


try:
    store = resources.current_store()
    head = store.audit_head()
    intact, count, problem = chain_check((head.seq, head.hash) if head else None, store.describe())
except StoreError as error:
    st.error(f"The audit trail cannot be read: {error}")
    st.stop()
if intact:
    st.success(f"The chain of {count:,} events is intact.", icon=":material/verified:")
else:
    st.error(f"The audit chain does not hold: {problem}.")

controls = st.columns(4)
action = controls[0].text_input("Action", placeholder="e.g. review, sign_in_failed", key="audit_action")
who = controls[1].text_input("Account", key="audit_who")
today = datetime.now(UTC).date()
days = controls[2].date_input("Dates (UTC)", (today - timedelta(days=30), today), key="audit_dates")
start_day, end_day = (days[0], days[-1]) if isinstance(days, tuple | list) and days else (today, today)
filters = {
    "action": action.strip() or None,
    "who": who.strip() or None,
    "start": datetime.combine(start_day, time(0), UTC),
    "end": datetime.combine(end_day + timedelta(days=1), time(0), UTC),
}
events = audit.events(store, actor, **filters)
st.caption(f"{len(events):,} events match.")
st.dataframe(
    pd.DataFrame(
        [
            {
                "seq": e.seq,
                "time (UTC)": f"{e.at:%Y-%m-%d %H:%M:%S}",
                "account": e.actor,
                "role": e.role,
                "action": e.action,
                "target": (e.target or "")[:16],
                "detail": ", ".join(f"{k}={v}" for k, v in e.detail.items()),
            }
            for e in reversed(events[-500:])
        ]
    ),
    hide_index=True,
    width="stretch",
)
if allowed(actor, AUDIT_EXPORT):
    controls[3].download_button(
        "Export (CSV)",
        lambda: audit.export_csv(store, actor, filters),
        f"audit-{today:%Y%m%d}.csv",
        "text/csv",
    )
