"""The supervisor's dashboard as one use case: every figure computed by the store's aggregates, then put under
the small-count rule (:mod:`core.analytics.stats`) before anything leaves this module.

The page draws what :func:`dashboard` returns and offers :func:`export_csv`; both show the same numbers, and the
export names the filters it was made with.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.analytics.quality import Accuracy, Drift, QualityRow, accuracy, quality_rows, roll_up_quality, turnaround
from core.analytics.stats import (
    PERIODS,
    SMALL_CELL,
    WITHHELD,
    WITHHELD_REASON,
    PeriodRate,
    complement,
    lone_withheld,
    roll_up,
    safe_rate,
    suppress_classes,
    suppress_group,
    suppress_small,
    wilson_interval,
)
from core.domain.results import LESION_QUANTILES, SHOWN, DayCount, Filters
from core.domain.times import next_period, period_start
from core.model.decision import NEGATIVE_LABEL
from core.services import audit
from core.services.access import STATISTICS, Actor, require
from core.services.exports import spreadsheet_safe
from core.storage.protocol import AuditTrail, Dashboards

# the lesion volumes' five quantiles are shown from this many studies: at five, the 25th, 50th and 75th percentiles
# are three studies' own volumes and the 10th and 90th give back the smallest and the largest
LESION_QUANTILES_FROM = 2 * SMALL_CELL


@dataclass(frozen=True)
class PeriodRow:
    start: date
    scans: int | None
    tumours: int | None
    rate: float | None
    interval: tuple[float, float] | None


@dataclass(frozen=True)
class VersionRow:
    model: str
    scans: int | None
    tumour_rate: float | None
    mean_confidence: float | None
    first: date | None  # None beside a withheld count: a single day of use would tell how few scans it read
    last: date | None


@dataclass(frozen=True)
class LesionRow:
    """Tumour studies with a lesion volume in one period and the :data:`LESION_QUANTILES` of their volumes (mL):
    the count withheld (None) from 1 to 4, the quantiles withheld below :data:`LESION_QUANTILES_FROM` studies."""

    start: date
    studies: int | None
    quantiles: tuple[float, ...] | None


@dataclass(frozen=True)
class Dashboard:
    """What a non-admin may see of the chosen range, small counts withheld (None)."""

    start_day: date
    end_day: date
    timezone: str
    period: str
    versions: tuple[str, ...]
    scans: int | None
    tumour_rate: float | None
    tumour_interval: tuple[float, float] | None
    mean_confidence: float | None
    today: int | None
    week_mean: float | None
    flagged: int | None
    rejected: int | None
    per_class: Mapping[str, int | None]
    periods: tuple[PeriodRow, ...]
    histogram: tuple[int | None, ...]
    models: tuple[VersionRow, ...]
    unit: str = "result"  # what the headline, the rate over time and the export count (:data:`UNITS`)
    lesion_studies: int | None = 0  # tumour studies with a lesion volume in the range (always counted per study)
    lesions: tuple[LesionRow, ...] = ()  # their volumes per period, every period of the range

    @property
    def empty(self) -> bool:
        return self.scans == 0 and not self.rejected


WITHHELD_TEXT = (WITHHELD, WITHHELD_REASON)  # how the page, its charts and the CSV name a withheld figure
UNITS = ("study", "result")  # a study counts once (tumour when any of its series is); a result is a scan or a series


def _study_days(store: Dashboards, filters: Filters, timezone: str) -> list[DayCount]:
    """Studies per local day: each single scan is a study of its own; series are grouped by their study (counted
    on the day its first series was saved, tumour when any series is)."""
    counts: dict[date, list[int]] = {}
    for rows in (
        store.daily_counts(replace(filters, kinds=("scan",)), timezone),
        store.daily_studies(filters, timezone),
    ):
        for d in rows:
            row = counts.setdefault(d.day, [0, 0])
            row[0] += d.total
            row[1] += d.tumour
    return [DayCount(day, n, t) for day, (n, t) in sorted(counts.items())]


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(timezone)).astimezone(UTC)


def date_range(start_day: date, end_day: date, timezone: str, versions: Sequence[str]) -> Filters:
    """Local days ``start_day`` to ``end_day`` inclusive in ``timezone``, for the chosen model versions."""
    return Filters(
        start=local_midnight(start_day, timezone),
        end=local_midnight(end_day + timedelta(days=1), timezone),
        model_versions=tuple(versions),
    )


def _lesion_rows(
    store: Dashboards, filters: Filters, timezone: str, period: str, start_day: date, end_day: date
) -> tuple[int | None, tuple[LesionRow, ...]]:
    """Tumour studies with a lesion volume in the range and per period (every period listed, empty ones as zero),
    with the quantiles of their volumes, under the small-count rule."""
    found = {row.start: row for row in store.lesion_volumes(filters, timezone, period)}
    starts, start = [], period_start(start_day, period)
    while start <= end_day:
        starts.append(start)
        start = next_period(start, period)
    counts = [found[s].studies if s in found else 0 for s in starts]
    shown = suppress_group(counts)  # they add up to the total shown: withheld as a group
    rows = [
        LesionRow(s, n, found[s].quantiles if n is not None and n >= LESION_QUANTILES_FROM else None)
        for s, n in zip(starts, shown, strict=True)
    ]
    return suppress_small(sum(row.studies for row in found.values())), tuple(rows)


def dashboard(
    store: Dashboards,
    actor: Actor,
    *,
    start_day: date,
    end_day: date,
    timezone: str,
    period: str,
    versions: Sequence[str] = (),
    now: datetime | None = None,
    unit: str = "result",
) -> Dashboard:
    """Aggregates of verdicts (gate-refused scans apart) from ``start_day`` to ``end_day`` inclusive, local days in
    ``timezone`` (supervisors and admins). With ``unit="study"`` the headline count and the rates count studies; the
    class mix, confidence and versions always count results, lesion volumes always tumour studies."""
    require(actor, STATISTICS)
    if period not in PERIODS:
        raise ValueError(f"period must be one of {PERIODS}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}")
    everything = date_range(start_day, end_day, timezone, versions)
    shown = replace(everything, gates=SHOWN)
    summary = store.summary(shown)
    gates = store.summary(everything).per_gate
    days = _study_days(store, shown, timezone) if unit == "study" else store.daily_counts(shown, timezone)
    today, week = _recent_counts(store, shown, timezone, unit, now)
    periods = roll_up(days, period, start_day, end_day)
    rows = period_rows(periods)
    hide_recent = withheld_recently(rows, period, timezone, now)
    total, tumours = sum(d.total for d in days), sum(d.tumour for d in days)
    rate = safe_rate(tumours, total)
    tumour_counts = [p.tumour for p in periods]
    if lone_withheld(tumour_counts, [None if r.tumours is None else r.tumours for r in rows]):
        rate = None  # the only period with tumours is withheld: the rate times the total would give it back
    models = store.by_model(shown)
    model_totals = suppress_group([m.total for m in models])
    classes = sorted(summary.per_class)
    class_counts = suppress_classes(classes, [summary.per_class[k] for k in classes], NEGATIVE_LABEL)
    lesion_studies, lesions = _lesion_rows(store, shown, timezone, period, start_day, end_day)
    return Dashboard(
        start_day=start_day,
        end_day=end_day,
        timezone=timezone,
        period=period,
        versions=tuple(versions),
        scans=suppress_small(total),
        tumour_rate=rate,
        tumour_interval=wilson_interval(tumours, total) if rate is not None else None,
        mean_confidence=summary.mean_confidence if suppress_small(summary.total) else None,
        today=None if hide_recent else suppress_small(today),
        week_mean=None if hide_recent or suppress_small(week) is None else week / 7,
        flagged=suppress_small(gates.get("needs_review", 0)),
        rejected=suppress_small(gates.get("rejected", 0)),
        per_class=dict(zip(classes, class_counts, strict=True)),
        periods=rows,
        histogram=suppress_group(store.confidence_histogram(shown)),
        models=tuple(
            VersionRow(
                model=f"{m.model_name} {m.model_version}",
                scans=scans,
                tumour_rate=safe_rate(m.tumour, m.total) if scans is not None else None,
                mean_confidence=m.mean_confidence if scans else None,
                first=m.first.astimezone(ZoneInfo(timezone)).date() if scans is not None else None,
                last=m.last.astimezone(ZoneInfo(timezone)).date() if scans is not None else None,
            )
            for m, scans in zip(models, model_totals, strict=True)
        ),
        unit=unit,
        lesion_studies=lesion_studies,
        lesions=lesions,
    )


def withheld_recently(rows: Sequence[PeriodRow], period: str, timezone: str, now: datetime | None) -> bool:
    """Whether a period whose count is withheld overlaps today or the 7 days before it: then today's count and the
    week's mean are withheld too, or either minus the shown periods would give the withheld count back."""
    local_today = (now or datetime.now(UTC)).astimezone(ZoneInfo(timezone)).date()
    first = local_today - timedelta(7)
    return any(r.scans is None and r.start <= local_today and next_period(r.start, period) > first for r in rows)


def _recent_counts(
    store: Dashboards, shown: Filters, timezone: str, unit: str, now: datetime | None
) -> tuple[int, int]:
    """Today's count and the last 7 whole days' (before today), in ``unit``, with the page's versions but whatever
    its date range: live figures mean the same counted per result or per study."""
    local_today = (now or datetime.now(UTC)).astimezone(ZoneInfo(timezone)).date()
    today_start, week_start, tomorrow = (
        local_midnight(local_today, timezone),
        local_midnight(local_today - timedelta(7), timezone),
        local_midnight(local_today + timedelta(1), timezone),  # a local day: 23 or 25 hours when clocks change
    )
    if unit == "study":
        days = _study_days(store, replace(shown, start=week_start, end=tomorrow), timezone)
        return sum(d.total for d in days if d.day == local_today), sum(d.total for d in days if d.day < local_today)
    today = store.summary(replace(shown, start=today_start, end=tomorrow)).total
    return today, store.summary(replace(shown, start=week_start, end=today_start)).total


def period_rows(periods: Sequence[PeriodRate]) -> tuple[PeriodRow, ...]:
    """Each period's count, tumours and rate, small counts withheld; the counts (which add up to the total) and the
    tumours (which add up to the total's tumours) each withheld as a group, so none is a difference of shown ones."""
    scans = suppress_group([p.total for p in periods])
    known = complement(
        [p.tumour for p in periods],
        [
            p.tumour if n is not None and (safe_rate(p.tumour, p.total) is not None or p.total == 0) else None
            for p, n in zip(periods, scans, strict=True)
        ],
    )
    return tuple(
        PeriodRow(
            p.start,
            n,
            t,
            safe_rate(p.tumour, p.total) if t is not None and p.total else None,
            wilson_interval(p.tumour, p.total) if t is not None and p.total else None,
        )
        for p, n, t in zip(periods, scans, known, strict=True)
    )


def model_versions(store: Dashboards, actor: Actor) -> list[str]:
    require(actor, STATISTICS)
    return store.model_versions()


def record_export(store: AuditTrail, actor: Actor, board: Dashboard) -> None:
    """An export of the aggregates is an audit event naming its filters (those who may see statistics)."""
    require(actor, STATISTICS)
    audit.record(
        store,
        actor,
        "statistics_export",
        None,
        start=board.start_day.isoformat(),
        end=board.end_day.isoformat(),
        period=board.period,
        versions=list(board.versions),
    )


def export_csv(board: Dashboard, quality: QualityBoard | None = None) -> bytes:
    """Everything the Statistics page shows, as one tidy CSV (``table, key, measure, value, low_95, high_95``):
    the headline figures, the rate per period, the class mix, the confidence histogram, the per-version table, the
    lesion volumes of tumour studies per period (when there are any) and, when given, the agreement, accuracy and
    drift board; comment lines first name the filters. Withheld small
    counts (those a total would give away with them, and rates that would reveal one) read ``withheld``, never 0 or
    empty."""
    buffer = io.StringIO()
    buffer.write(f"# dates: {board.start_day.isoformat()} to {board.end_day.isoformat()} ({board.timezone})\n")
    # the comment lines are written as text, not through the CSV writer: a version's own commas, line breaks or a
    # leading '=' would open cells (a formula among them) in a spreadsheet
    versions = "; ".join(spreadsheet_safe(" ".join(v.replace(",", " ").split())) for v in board.versions) or "all"
    buffer.write(f"# group by: {board.period}; model versions: {versions}\n")
    buffer.write(
        f"# counted per {board.unit}"
        + (
            ": a study counts once, tumour when any of its series is; a single scan is a study of its own\n"
            if board.unit == "study"
            else ": each scan or series once\n"
        )
    )
    buffer.write(
        "# verdicts shown to users only (scans refused by the input gate are counted apart); counts from 1 to "
        "4, counts that the total would give away beside one, and rates that would reveal one, read 'withheld'; "
        "the class mix, confidence and versions "
        "count results; lesion volumes count tumour studies (quantiles withheld below 10)\n"
    )
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "key", "measure", "value", "low_95", "high_95"])
    unit = "studies" if board.unit == "study" else "results"

    def row(
        table: str,
        key: str,
        measure: str,
        value: object,
        interval: tuple[float, float] | None = None,
        digits: int | None = None,
    ) -> None:
        low, high = interval if interval else (None, None)
        writer.writerow([table, spreadsheet_safe(key), measure, _cell(value, digits), _cell(low, 4), _cell(high, 4)])

    row("summary", "", unit, board.scans)
    row("summary", "", "tumour_rate", board.tumour_rate, board.tumour_interval, 4)
    row("summary", "", "mean_confidence", board.mean_confidence, digits=4)
    row("summary", "", "today", board.today)
    row("summary", "", "mean_per_day_last_7_days", board.week_mean, digits=2)
    row("summary", "", "flagged", board.flagged)
    row("summary", "", "refused_by_gate", board.rejected)
    for period in board.periods:
        row("per_period", period.start.isoformat(), unit, period.scans)
        row("per_period", period.start.isoformat(), "tumour", period.tumours)
        row("per_period", period.start.isoformat(), "tumour_rate", period.rate, period.interval, 4)
    for label, count in board.per_class.items():
        row("class_mix", label, "results", count)
    bins = len(board.histogram)
    for k, count in enumerate(board.histogram):
        row("confidence", f"{k / bins:.2f}-{(k + 1) / bins:.2f}", "results", count)
    for version in board.models:
        row("model_version", version.model, "results", version.scans)
        row("model_version", version.model, "tumour_rate", version.tumour_rate, digits=4)
        row("model_version", version.model, "mean_confidence", version.mean_confidence, digits=4)
        row("model_version", version.model, "first_day", version.first.isoformat() if version.first else WITHHELD)
        row("model_version", version.model, "last_day", version.last.isoformat() if version.last else WITHHELD)
    _lesion_export(row, board)
    if quality is not None:
        overall = quality.overall
        row("accuracy", "all versions", "reviewed", overall.reviewed)
        row("accuracy", "all versions", "agreement", overall.agreement, digits=4)
        row("accuracy", "all versions", "sensitivity", overall.sensitivity, overall.sensitivity_interval, 4)
        row("accuracy", "all versions", "specificity", overall.specificity, overall.specificity_interval, 4)
        row("review", "", "backlog", quality.backlog)
        row("review", "", "turnaround_median_h", quality.turnaround_median_h, digits=2)
        row("review", "", "turnaround_p90_h", quality.turnaround_p90_h, digits=2)
        for q in quality.rows:
            key = q.start.isoformat()
            row("quality_per_period", key, "reviewed", q.reviewed)
            row("quality_per_period", key, "agreement", q.agreement, q.agreement_interval, 4)
            row("quality_per_period", key, "tumour_rate", q.tumour_rate, q.rate_limits, 4)
            row("quality_per_period", key, "mean_tumour_probability", q.mean_probability, q.mean_limits, 4)
            row("quality_per_period", key, "out_of_control", str(q.out_of_control).lower())
    return buffer.getvalue().encode("utf-8")


QUANTILE_NAMES = {0.1: "p10", 0.25: "p25", 0.5: "median", 0.75: "p75", 0.9: "p90"}


def _lesion_export(row, board: Dashboard) -> None:
    """The lesion volumes of tumour studies per period (count, then quantiles in mL), when the range has any."""
    if board.lesion_studies == 0:
        return
    row("lesion_volume", "", "tumour_studies_with_volume", board.lesion_studies)
    for period in board.lesions:
        key = period.start.isoformat()
        row("lesion_volume_per_period", key, "tumour_studies_with_volume", period.studies)
        if period.studies != 0:  # an empty period has no quantiles; a withheld one reads "withheld"
            for q, value in zip(LESION_QUANTILES, period.quantiles or (None,) * len(LESION_QUANTILES), strict=True):
                row("lesion_volume_per_period", key, f"{QUANTILE_NAMES[q]}_ml", value, digits=3)


def _cell(value: object, digits: int | None = None) -> str:
    """A CSV cell: ``withheld`` for a withheld figure (None), the value otherwise (text a spreadsheet would run, such as
    a model version starting with ``=``, neutralised)."""
    if value is None:
        return WITHHELD
    if digits is not None and isinstance(value, int | float):
        return str(round(value, digits))
    return spreadsheet_safe(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class QualityBoard:
    """Agreement with the radiologists, accuracy against reviewed cases, backlog and drift (small counts withheld)."""

    rows: tuple[QualityRow, ...]
    drift: Drift
    overall: Accuracy
    per_version: Mapping[str, Accuracy]
    backlog: int | None
    turnaround_median_h: float | None
    turnaround_p90_h: float | None


def per_version_accuracy(confusions: Mapping[str, Mapping[tuple[str, str], int]]) -> dict[str, Accuracy]:
    """Each version's accuracy, their reviewed counts (which add up to the overall one shown) withheld as a group."""
    reviewed = suppress_group([sum(c.values()) for c in confusions.values()])
    return {
        version: replace(accuracy(confusion), reviewed=n)
        for (version, confusion), n in zip(confusions.items(), reviewed, strict=True)
    }


def quality_board(
    store: Dashboards,
    actor: Actor,
    *,
    start_day: date,
    end_day: date,
    timezone: str,
    period: str,
    versions: Sequence[str] = (),
    baseline_end: date | None = None,
) -> QualityBoard:
    """What the supervisor monitors over the chosen range (computed in the database, then rolled up)."""
    require(actor, STATISTICS)
    scope = date_range(start_day, end_day, timezone, versions)
    days = store.daily_quality(scope, timezone)
    periods = roll_up_quality(days, period, start_day, end_day)
    rows, drift = quality_rows(periods, baseline_end)
    median, p90 = turnaround(store.turnaround_hours(scope))
    chosen = list(versions) or store.model_versions()
    overall = accuracy(store.confusion(scope))
    agreed = [p.agreed for p in periods]
    if lone_withheld(agreed, [a if r.agreement is not None else None for a, r in zip(agreed, rows, strict=True)]):
        overall = replace(overall, agreement=None)  # the one period withheld: the overall agreement gives it back
    return QualityBoard(
        rows=tuple(rows),
        drift=drift,
        overall=overall,
        per_version=per_version_accuracy({v: store.confusion(replace(scope, model_versions=(v,))) for v in chosen}),
        backlog=suppress_small(sum(d.shown - d.reviewed for d in days)),
        turnaround_median_h=median,
        turnaround_p90_h=p90,
    )
