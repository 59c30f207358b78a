"""Statistics page: live aggregates of saved results for supervisors (refreshes itself; exportable).

Everything shown follows the small-count rule: counts from 1 to 4, and rates that would reveal them, are withheld.
"""

from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pandas as pd
import streamlit as st

from core.errors import StoreError
from core.services import statistics, statistics_export
from core.services.access import STATISTICS, STORAGE_DETAILS, allowed
from ui import charts, resources
from ui.auth import audited_download, fragment_actor
from ui.page import setup_page
from ui.selection import dates_within
from ui.wording import LABEL_NAMES, hours_within, plain, pretty

LIVE_WITHIN_SECONDS = 30  # what the page promises: a new result is on the board within this long
REFRESH_SECONDS = 25  # the board re-runs this often ...
CACHE_SECONDS = 5  # ... and reads figures at most this old: 25 + 5 <= 30 (a cache as long as the refresh doubled it)

actor = setup_page("Statistics", STATISTICS)
st.title("Statistics")
try:
    store = resources.current_store()
except StoreError as error:
    st.error(f"The results database cannot be opened: {error}")
    st.stop()
source = store.describe()


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def board(
    actor,
    start_day: date,
    end_day: date,
    timezone: str,
    period: str,
    versions: tuple[str, ...],
    source: str,
    unit: str = "study",
):
    """The dashboard's aggregates, cached for at most one refresh period per user (the service checks the role on
    every computation): aggregates only, small counts already withheld (``source`` names the database)."""
    del source
    return statistics.dashboard(
        store,
        actor,
        start_day=start_day,
        end_day=end_day,
        timezone=timezone,
        period=period,
        versions=versions,
        unit=unit,
    )


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def quality(
    actor,
    start_day: date,
    end_day: date,
    timezone: str,
    period: str,
    versions: tuple[str, ...],
    baseline_end: date | None,
    source: str,
):
    """Agreement, accuracy against reviewed cases, backlog and drift, cached like the dashboard."""
    del source
    return statistics.quality_board(
        store,
        actor,
        start_day=start_day,
        end_day=end_day,
        timezone=timezone,
        period=period,
        versions=versions,
        baseline_end=baseline_end,
    )


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def versions(actor, source: str) -> dict[str, str]:
    del source
    return statistics.model_versions(store, actor)


browser_zone = st.context.timezone if st.context.timezone in available_timezones() else "UTC"
zones = sorted({browser_zone, "UTC", "Europe/London", "Europe/Paris", "America/New_York", "Asia/Tokyo"})
controls = st.columns([1, 1.4, 1.2, 1, 0.8])
timezone = controls[0].selectbox("Time zone", zones, index=zones.index(browser_zone), key="stats_zone")
today = datetime.now(ZoneInfo(timezone)).date()


def default_range(day: date) -> tuple[date, date]:
    return day - timedelta(days=89), day


# the default range follows today (a new day, a zone already on another date: its results were missing from the
# totals while "Today" counted them); a range the supervisor chose is kept, a time-zone change included
follows_today = st.session_state.get("stats_dates") in (None, st.session_state.get("stats_default"))
if follows_today:
    st.session_state["stats_dates"] = default_range(today)
st.session_state["stats_default"] = default_range(today)
# a day past today: a range chosen in a zone already on tomorrow stays valid when the zone is changed (and one
# further ahead is brought back to that day)
st.session_state["stats_dates"] = dates_within(st.session_state["stats_dates"], today + timedelta(days=1))
chosen = controls[1].date_input("Dates", key="stats_dates", max_value=today + timedelta(days=1))
period = controls[2].radio("Group by", statistics.PERIODS, horizontal=True, index=0, key="stats_period")
try:
    available = versions(actor, source)
except StoreError as error:
    st.error(f"The results database cannot be read: {error}")
    st.stop()
picked = st.multiselect(  # a row of its own: in a column, a version read "+944..." and two showed as one
    "Model versions",
    list(available),
    format_func=lambda v: available.get(v, v),
    placeholder="all versions",
    key="stats_versions",
)
UNIT_NAMES = {"study": "per study", "result": "per scan or series"}
unit = controls[3].radio(
    "Count",
    list(UNIT_NAMES),
    format_func=UNIT_NAMES.get,
    key="stats_unit",
    help="Per study: a study counts once (once for each model version that read it: pick a version to count it "
    "once), tumour when any of its series is, not at all when none is and one of its series could not be read (it "
    "has no verdict); a single scan is a study of its own. Per scan or series: every saved result once.",
)
paused = controls[4].toggle("Pause", help=f"Stop refreshing (every {REFRESH_SECONDS} s)")
try:  # no key (MongoDB without one): a series keeps no study, and "per study" counted every series as a study
    ungrouped = statistics_export.UNGROUPED if resources.current_patient_key() is None else None
except ValueError:  # a key that cannot be used: the pages save without one
    ungrouped = statistics_export.UNUSABLE_KEY
if ungrouped and unit == "study":
    st.warning(f"{ungrouped}.", icon=":material/warning:")

days_chosen = list(chosen) if isinstance(chosen, tuple | list) else [chosen]
if not days_chosen:
    st.info("Choose a start and an end date.")
    st.stop()
start_day, end_day = days_chosen[0], days_chosen[-1]
# what the board counts, said: a date typed past the allowed range stayed in its field, in red, above the figures
# of the range before it
counted = ", ".join(available.get(v, v) for v in picked) if picked else "all versions"
st.caption(
    f"Counting {start_day:%d %b %Y} to {end_day:%d %b %Y} ({timezone}), {plain(counted)}, {UNIT_NAMES[unit]}.",
    help="Dates past tomorrow cannot be chosen: a range typed beyond it is not applied.",
)


WITHHELD_MARK, WITHHELD = statistics.WITHHELD_TEXT


def number(value: int | None) -> str:
    return f"{value:,}" if value is not None else WITHHELD_MARK


def percent(value: float | None, interval: tuple[float, float] | None = None, counted: int | None = None) -> str:
    """A rate as the page gives it; "—" when nothing was counted (``counted`` 0: "withheld" read as a secret)."""
    if value is None:
        return "—" if counted == 0 else "withheld"
    return f"{value:.1%}" + (f" ({interval[0]:.0%}-{interval[1]:.0%})" if interval else "")


baseline_end = st.date_input(
    "Drift baseline: periods up to",
    value=None,
    key="stats_baseline",
    help="The tumour rate and mean tumour probability (single scans) of later periods are checked against this "
    "baseline's 3-sigma control limits. Empty: the first half of the chosen range.",
)


def quality_figures(board_q) -> None:
    """The quality board's headline: reviewed, agreement, sensitivity, specificity, backlog and turnaround."""
    overall = board_q.overall
    kpis = [*st.columns(3), *st.columns(3)]  # two rows: six in one cut "within 4 h" and their labels at 1400 px
    kpis[0].metric("Reviewed", number(overall.reviewed))
    kpis[1].metric("Agreement", percent(overall.agreement, counted=overall.reviewed))
    kpis[2].metric(
        "Sensitivity",
        percent(overall.sensitivity, counted=overall.tumours_counted),
        help=None
        if overall.sensitivity_interval is None
        else "95 % interval {:.1%} to {:.1%}".format(*overall.sensitivity_interval),
    )
    kpis[3].metric(
        "Specificity",
        percent(overall.specificity, counted=overall.clear_counted),
        help=None
        if overall.specificity_interval is None
        else "95 % interval {:.1%} to {:.1%}".format(*overall.specificity_interval),
    )
    kpis[4].metric(  # refused images wait on the Worklist too, counted apart: the figure says which it counts
        "Verdicts awaiting review",
        number(board_q.backlog),
        help="Results saved in the chosen dates with a verdict not reviewed yet (older ones waiting are on the "
        "Worklist, not counted here: widen the dates to count them). Images the input gate refused, also on the "
        "Worklist for a "
        "radiologist to confirm or override, are in Refused results (reviewed or not), not here.",
    )
    median, p90 = board_q.turnaround_median_h, board_q.turnaround_p90_h
    backlog = "Results" if board_q.backlog is None else f"The {number(board_q.backlog)} results"  # None: withheld
    waiting = (  # a median of the reviewed alone is kindest when most wait: it never said they were left out
        f" {backlog} awaiting review are not in it, and would lengthen it." if board_q.backlog != 0 else ""
    )
    kpis[5].metric(
        "Review turnaround (median)",
        ("—" if overall.reviewed == 0 else "withheld") if median is None else hours_within(median),  # None: withheld
        help="From saving to the first review, of the results reviewed."
        + ("" if p90 is None else f" 90 % of them were reviewed {hours_within(p90)}.")
        + waiting,
    )
    st.caption(
        "Against the radiologists' final labels, reviewed results only, per scan or series (a study reviewed from the "
        "PACS gives its label to each of its series: a series the model called no tumour in a tumour study counts "
        "as missed). Intervals are 95 % Wilson."
    )


def quality_section(viewer, first: date, last: date):
    board_q = quality(viewer, first, last, timezone, period, tuple(picked), baseline_end, source)
    st.subheader("Model quality: agreement with the radiologists and drift")
    if board_q.drift.message:
        st.error(board_q.drift.message, icon=":material/warning:")
    starts = [row.start for row in board_q.rows]
    if baseline_end is not None and starts and not starts[0] <= baseline_end < starts[-1]:  # the alarm was off, unsaid
        where = "before the chosen range starts" if baseline_end < starts[0] else "on or after its last period"
        st.warning(
            f"The drift baseline ends {where}: no period is checked against it. Choose a day inside the range, or "
            "leave it empty (the first half of the range).",
            icon=":material/warning:",
        )
    elif board_q.drift.unchecked and any(row.shown != 0 for row in board_q.rows):  # nothing at all: nothing to check
        # (a withheld period, None, holds results)
        st.warning(board_q.drift.unchecked, icon=":material/warning:")
    quality_figures(board_q)
    overall = board_q.overall
    left, right = st.columns(2)
    left.plotly_chart(charts.agreement(board_q, period), width="stretch", key="agreement")
    right.plotly_chart(charts.drift(board_q, period), width="stretch", key="drift")
    matrix_labels = sorted({label for cell in overall.matrix for label in cell})
    if matrix_labels:
        st.markdown("**Model verdict (rows) against final label (columns)**, reviewed results")
        st.dataframe(
            pd.DataFrame(
                [
                    {"model": pretty(a), **{pretty(b): number(overall.matrix.get((a, b), 0)) for b in matrix_labels}}
                    for a in matrix_labels
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "model version": available.get(v, v),
                    "reviewed": number(a.reviewed),
                    "agreement": percent(a.agreement, counted=a.reviewed),
                    "sensitivity": percent(a.sensitivity, a.sensitivity_interval, a.tumours_counted),
                    "specificity": percent(a.specificity, a.specificity_interval, a.clear_counted),
                }
                for v, a in board_q.per_version.items()
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    return board_q


MODELS_CALLS = (
    "The model's calls, as made: a radiologist's override does not change them (the quality board below sets them "
    "against the final labels)."
)


def headline(dashboard) -> None:
    """The key figures, then the count per verdict."""
    kpis = [*st.columns(3), *st.columns(3)]  # two rows, as the quality board's: six in one cut "50.…" at 1,024 px
    counted = "Studies" if dashboard.unit == "study" else "Scans and series"
    kpis[0].metric(
        f"{counted} with a verdict", number(dashboard.scans), help=WITHHELD if dashboard.scans is None else None
    )
    rate = dashboard.tumour_rate
    kpis[1].metric(
        "Tumour rate (model)",
        percent(rate, counted=dashboard.scans),
        help=MODELS_CALLS
        + (
            ""
            if dashboard.tumour_interval is None
            else " 95 % interval {:.1%} to {:.1%}.".format(*dashboard.tumour_interval)
        ),
    )
    # today is still going on: set against whole days, every morning read as a fall, so the mean is said, not subtracted
    week = None if dashboard.week_mean is None else f"The last 7 whole days averaged {dashboard.week_mean:.1f} a day."
    kpis[2].metric(
        "Today so far",
        number(dashboard.today),
        help=WITHHELD if dashboard.today is None else week,
    )
    kpis[3].metric(
        "Mean confidence",
        percent(dashboard.mean_confidence, counted=dashboard.single_scans),
        help="Single scans only: the probability that a scan's tumour / no-tumour call is right, averaged (a series "
        "is called by its rule, and its score is not that probability). "
        + ("" if dashboard.single_scans != 0 else "No single scans in this range."),
    )
    per_result = "Counted per result (a series once, a single scan once), whatever the unit above."
    kpis[4].metric(
        "Flagged results",
        number(dashboard.flagged),
        help="Flagged for review: the tumour probability lies in the model's review band (uncertain), or a series "
        f"rests on fewer neighbouring sections than its rule asks. {per_result}",
    )
    kpis[5].metric(
        "Refused results",
        number(dashboard.rejected),
        help=f"Refused by the input gate (not a brain MRI slice it can read). {per_result}",
    )
    st.caption(
        "The model's calls per class, counting results, as made: an override does not change them (the quality "
        "board below sets them against the final labels)."
    )
    classes = st.columns(max(1, len(dashboard.per_class)))
    for column, (label, count) in zip(classes, dashboard.per_class.items(), strict=False):
        column.metric(pretty(label), number(count))


def volume_charts(dashboard) -> None:
    """The tumour rate over time, the class mix and the confidence histogram."""
    st.plotly_chart(charts.rate(dashboard), width="stretch", key="rate")
    if partial := statistics.partial_periods(dashboard, datetime.now(ZoneInfo(dashboard.timezone)).date()):
        st.caption(partial)
    left, right = st.columns(2)
    left.plotly_chart(charts.mix(dashboard, LABEL_NAMES), width="stretch", key="mix")
    right.plotly_chart(charts.confidence(dashboard), width="stretch", key="confidence")
    st.caption(
        "Counts from 1 to 4, counts the total would give away beside one, and rates that would reveal them, are "
        "withheld: small counts can identify patients. "
        "Periods without scans are shown as zero. The bars on the rate are its 95 % interval. The class mix counts "
        "every scan or series; the confidence, single scans only."
    )


def lesion_chart(dashboard) -> None:
    """The lesion volumes of tumour studies per period (a box each), or why there is none."""
    if dashboard.lesion_studies == 0:
        st.caption("No tumour study in this range has a lesion volume (series saved with the lesion segmenter).")
        return
    st.plotly_chart(charts.lesions(dashboard), width="stretch", key="lesions")
    st.caption(
        f"Tumour studies with a lesion volume: {number(dashboard.lesion_studies)}. A study's volume is the mean of its "
        "tumour series' volumes, counted in the period of its first series. Boxes: 25th to 75th percentile around "
        "the median; whiskers: 10th and 90th percentiles (never one study's own extreme). Periods with fewer than 10 "
        "studies show no box (with fewer, the percentiles would give back single studies' volumes)."
    )


def by_model_version(dashboard) -> None:
    st.subheader("By model version")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "model": m.model,
                    "results": number(m.scans),  # scans and series, each counted (studies are not split by version)
                    "tumour rate": percent(m.tumour_rate),  # as the headline gives it (it read 0.4321 here)
                    "mean confidence (scans)": percent(m.mean_confidence, counted=m.single_scans),
                    "first": m.first.isoformat() if m.first else WITHHELD_MARK,
                    "last": m.last.isoformat() if m.last else WITHHELD_MARK,
                }
                for m in dashboard.models
            ]
        ),
        hide_index=True,
        width="stretch",
    )


def exported(viewer, dashboard, quality) -> Callable[[], bytes]:
    """The export, made when its button is pressed by the account as it stands then: its audit event first."""

    def make(current) -> bytes:
        statistics_export.record_export(store, current, dashboard)
        return statistics_export.export_csv(dashboard, quality, ungrouped)

    return audited_download(store, viewer, STATISTICS, make)


@st.fragment(run_every=None if paused else REFRESH_SECONDS)
def live_dashboard() -> None:
    viewer = fragment_actor(activity=False)  # checks as a page run does; a timed refresh is not the user's activity
    first, last = default_range(datetime.now(ZoneInfo(timezone)).date()) if follows_today else (start_day, end_day)
    try:
        dashboard = board(viewer, first, last, timezone, period, tuple(picked), source, unit)
    except StoreError as error:
        st.error(f"The results database cannot be read: {error}")
        return
    where = f" · {source}" if allowed(viewer, STORAGE_DETAILS) else ""  # where results are kept: admins only
    st.caption(f"Updated at {datetime.now(ZoneInfo(timezone)):%H:%M:%S} ({timezone}){where}")
    if dashboard.empty:
        st.info(
            "No saved results in this date range and model selection yet. Results appear here as soon as scans are "
            "analysed on the Scan page (or back-filled with `python -m core predict --save`)."
        )
        return
    headline(dashboard)
    volume_charts(dashboard)
    lesion_chart(dashboard)
    by_model_version(dashboard)
    try:
        shown_quality = quality_section(viewer, first, last)
    except StoreError as error:  # the figures above stay; the quality board says why it is missing
        st.error(f"The model-quality figures cannot be read: {error}")
        shown_quality = None
    st.download_button(
        "Export these aggregates (CSV)",
        exported(viewer, dashboard, shown_quality),
        # the range, unit and period it holds (two exports of a day were one name), dated in the board's zone
        f"statistics-{first:%Y%m%d}-{last:%Y%m%d}-per-{unit}-by-{period}.csv",
        "text/csv",
    )


live_dashboard()
