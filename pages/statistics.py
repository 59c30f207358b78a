"""Statistics page: live aggregates of saved results for supervisors (refreshes itself; exportable)."""

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pandas as pd
import streamlit as st

from core.charts import class_mix_figure, confidence_figure, tumour_rate_figure
from core.errors import StoreError
from core.records import SHOWN, Filters
from core.stats import PERIODS, roll_up, suppress_small
from ui import resources
from ui.page import setup_page
from ui.render import LABEL_NAMES, pretty

REFRESH_SECONDS = 30

setup_page("Statistics")
st.title("Statistics")
try:
    store = resources.current_store()
except StoreError as error:
    st.error(f"The results database cannot be opened: {error}")
    st.stop()
source = store.describe()


@st.cache_data(ttl=REFRESH_SECONDS, show_spinner=False)
def query(kind: str, filters: Filters, timezone: str, source: str) -> object:
    """One aggregate from the database (``source`` names it, for the cache key), cached for at most one refresh
    period. Shared by all sessions, so it returns aggregates and display rows only: no patient references."""
    if kind == "summary":
        return store.summary(filters)
    if kind == "days":
        return store.daily_counts(filters, timezone)
    if kind == "histogram":
        return store.confidence_histogram(filters)
    if kind == "models":
        return store.by_model(filters)
    if kind == "recent":
        return [
            {
                "time": r.created_at.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M"),
                "verdict": pretty(r.label),
                "tumour probability": round(r.tumour_probability, 3),
                "confidence": round(r.confidence, 3),
                "model": r.model_version,
                "reviewed": r.review_verdict or "",
            }
            for r in store.recent(50, filters)
        ]
    if kind == "versions":
        return store.model_versions()
    raise ValueError(kind)


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(timezone)).astimezone(UTC)


browser_zone = st.context.timezone if st.context.timezone in available_timezones() else "UTC"
zones = sorted({browser_zone, "UTC", "Europe/London", "Europe/Paris", "America/New_York", "Asia/Tokyo"})
controls = st.columns([1, 1.4, 1, 1.2, 0.8])
timezone = controls[0].selectbox("Time zone", zones, index=zones.index(browser_zone))
today = datetime.now(ZoneInfo(timezone)).date()
chosen = controls[1].date_input("Dates", (today - timedelta(days=89), today), max_value=today + timedelta(days=1))
period = controls[2].radio("Group by", PERIODS, horizontal=True, index=0)
try:
    versions = query("versions", Filters(), timezone, source)
except StoreError as error:
    st.error(f"The results database cannot be read: {error}")
    st.stop()
picked = controls[3].multiselect("Model versions", versions, placeholder="all versions")
paused = controls[4].toggle("Pause", help=f"Stop refreshing (every {REFRESH_SECONDS} s)")

days_chosen = list(chosen) if isinstance(chosen, tuple | list) else [chosen]
if not days_chosen:
    st.info("Choose a start and an end date.")
    st.stop()
start_day, end_day = days_chosen[0], days_chosen[-1]
everything = Filters(
    start=local_midnight(start_day, timezone),
    end=local_midnight(end_day + timedelta(days=1), timezone),
    model_versions=tuple(picked),
)
filters = replace(everything, gates=SHOWN)  # verdicts only: scans the input gate rejected are counted apart


@st.fragment(run_every=None if paused else REFRESH_SECONDS)
def live_dashboard() -> None:
    try:
        dashboard()
    except StoreError as error:
        st.error(f"The results database cannot be read: {error}")


def dashboard() -> None:
    summary = query("summary", filters, timezone, source)
    gates = query("summary", everything, timezone, source).per_gate
    st.caption(f"Updated at {datetime.now(ZoneInfo(timezone)):%H:%M:%S} ({timezone}) · {source}")
    if summary.total == 0:
        st.info(
            "No saved results in this date range and model selection yet. Results appear here as soon as scans are "
            "analysed on the Scan page (or back-filled with `python -m core predict`)."
        )
        return
    local_today = datetime.now(ZoneInfo(timezone)).date()
    today_start = local_midnight(local_today, timezone)
    today_summary = query("summary", replace(filters, start=today_start, end=None), timezone, source)
    week_start = local_midnight(local_today - timedelta(days=7), timezone)
    week = query("summary", replace(filters, start=week_start, end=today_start), timezone, source)
    kpis = st.columns(6)
    kpis[0].metric("Scans with a verdict", f"{summary.total:,}")
    kpis[1].metric("Tumour rate", f"{summary.tumour_rate:.1%}")
    kpis[2].metric(
        "Today", f"{today_summary.total:,}", delta=f"{today_summary.total - week.total / 7:+.1f} vs 7-day mean"
    )
    kpis[3].metric("Mean confidence", f"{summary.mean_confidence:.1%}")
    kpis[4].metric("Flagged for review", f"{gates.get('needs_review', 0):,}")
    kpis[5].metric("Rejected (not brain MRI)", f"{gates.get('rejected', 0):,}")
    classes = st.columns(max(1, len(summary.per_class)))
    for column, (label, count) in zip(classes, sorted(summary.per_class.items()), strict=False):
        column.metric(pretty(label), f"{count:,}")

    days = query("days", filters, timezone, source)
    periods = roll_up(days, period)
    st.plotly_chart(tumour_rate_figure(periods, period), use_container_width=True, key="rate")
    left, right = st.columns(2)
    left.plotly_chart(class_mix_figure(summary.per_class, LABEL_NAMES), use_container_width=True, key="mix")
    right.plotly_chart(
        confidence_figure(query("histogram", filters, timezone, source)), use_container_width=True, key="confidence"
    )
    st.caption("Rates for periods with fewer than 5 scans are not drawn: small counts can identify patients.")

    st.subheader("By model version")
    models = pd.DataFrame(
        [
            {
                "model": f"{m.model_name} {m.model_version}",
                "scans": m.total,
                "tumour rate": round(m.tumour / m.total, 4),
                "mean confidence": round(m.mean_confidence, 4),
                "first": m.first.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d"),
                "last": m.last.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d"),
            }
            for m in query("models", filters, timezone, source)
        ]
    )
    st.dataframe(models, hide_index=True, use_container_width=True)

    st.subheader("Latest results")
    latest = pd.DataFrame(query("recent", filters, timezone, source))
    st.dataframe(latest, hide_index=True, use_container_width=True)

    export = pd.DataFrame(  # counts of 1-4 are withheld: small cells can identify patients
        [
            {"period_start": p.start.isoformat(), "scans": suppress_small(p.total), "tumour": suppress_small(p.tumour)}
            for p in periods
        ]
    )
    st.download_button(
        "Export these aggregates (CSV)",
        export.to_csv(index=False).encode("utf-8"),
        f"tumour-rate-per-{period}.csv",
        "text/csv",
    )


live_dashboard()
