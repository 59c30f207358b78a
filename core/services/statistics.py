"""The supervisor's dashboard as one use case: every figure computed by the store's aggregates, then put under
the small-count rule (:mod:`core.analytics.stats`) before anything leaves this module.

The page draws what :func:`dashboard` returns and offers :func:`core.services.statistics_export.export_csv`; both
show the same numbers, and the export names the filters it was made with.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from core.analytics.quality import (
    Accuracy,
    Drift,
    QualityRow,
    accuracy,
    per_version_accuracy,
    quality_rows,
    roll_up_quality,
    scored_by_scans,
    turnaround,
    without_agreement,
)
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
from core.domain.results import SHOWN, DayCount, Filters
from core.domain.times import local_day, local_midnight, next_period, period_starts
from core.model.decision import CLASSES, NEEDS_REVIEW, NEGATIVE_LABEL, REJECTED
from core.services.access import STATISTICS, Actor, require
from core.storage.protocol import Dashboards

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
    single_scans: int | None  # those the mean is of (0: none, the mean "none"; withheld from 1 to 4)
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
    single_scans: int | None  # as in VersionRow
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

    any_results: bool = True  # any result in the range, refused or not (a withheld refusal count, or studies with no

    @property  # verdict, hid the whole board under "no saved results")
    def empty(self) -> bool:
        return not self.any_results


WITHHELD_TEXT = (WITHHELD, WITHHELD_REASON)  # how the page, its charts and the CSV name a withheld figure
UNITS = ("study", "result")  # a study counts once (by the study rule); a result is a scan or a series


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
    starts = period_starts(start_day, end_day, period)
    counts = [found[s].studies if s in found else 0 for s in starts]
    shown = suppress_group(counts)  # they add up to the total shown: withheld as a group
    rows = [
        LesionRow(s, n, found[s].quantiles if n is not None and n >= LESION_QUANTILES_FROM else None)
        for s, n in zip(starts, shown, strict=True)
    ]
    return suppress_small(sum(row.studies for row in found.values())), tuple(rows)


def _one_state(board: Callable[..., Any]) -> Callable[..., Any]:
    """A board whose queries read one state of the database (SQLite: one read transaction; MongoDB reads as it
    goes): read apart, results saved between them gave a board whose classes did not add up to its count."""

    @functools.wraps(board)
    def read(store: Dashboards, actor: Actor, **options: Any) -> Any:
        with getattr(store, "snapshot", contextlib.nullcontext)():
            return board(store, actor, **options)

    return read


@_one_state
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
    summary, every = store.summary(shown), store.summary(everything)
    gates = every.per_gate
    days = _study_days(store, shown, timezone) if unit == "study" else store.daily_counts(shown, timezone)
    today, week = _recent_counts(store, shown, timezone, unit, now)
    periods = roll_up(days, period, start_day, end_day)
    rows = period_rows(periods)
    gives_back = recent_gives_back(rows, period, timezone, now, today, week)
    # today's count beside a withheld period before it gives nothing back (the week's mean does): "Today so far"
    # was withheld while today's own bar, the same count, stood on the board
    hide_today = gives_back or withheld_recently(rows, period, timezone, now, days=0)
    hide_week = gives_back or withheld_recently(rows, period, timezone, now)
    total, tumours = sum(d.total for d in days), sum(d.tumour for d in days)
    rate = safe_rate(tumours, total)
    # the only period with tumours withheld: every figure that sums the tumours would give it back (the rate times
    # the total, the tumour classes, a version's rate times its count)
    lone = lone_withheld([p.tumour for p in periods], [r.tumours for r in rows])
    rate = None if lone else rate
    # confidence is the probability that a single scan's call is right; a series' score is the lowest probability
    # of its deciding sections under its own threshold (a tumour series at 0.30 read as 30 % sure): scans only
    scans_only = replace(shown, kinds=("scan",))
    scan_summary = store.summary(scans_only)
    classes = sorted(set(summary.per_class) | set(CLASSES))  # every class, an empty one too (zero, or withheld)
    class_counts = suppress_classes(classes, [summary.per_class.get(k, 0) for k in classes], NEGATIVE_LABEL)
    if lone:
        class_counts = tuple(None if c != NEGATIVE_LABEL else n for c, n in zip(classes, class_counts, strict=True))
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
        mean_confidence=scan_summary.mean_confidence if suppress_small(scan_summary.total) else None,
        single_scans=suppress_small(scan_summary.total),
        today=None if hide_today else suppress_small(today),
        week_mean=None if hide_week or suppress_small(week) is None else week / 7,
        flagged=suppress_small(gates.get(NEEDS_REVIEW, 0)),
        rejected=suppress_small(gates.get(REJECTED, 0)),
        per_class=dict(zip(classes, class_counts, strict=True)),
        periods=rows,
        histogram=suppress_group(store.confidence_histogram(scans_only)),
        models=version_rows(store, shown, scans_only, timezone, lone),
        unit=unit,
        lesion_studies=lesion_studies,
        lesions=lesions,
        any_results=every.total > 0,
    )


def version_rows(store: Dashboards, shown: Filters, scans_only: Filters, timezone: str, lone: bool) -> tuple:
    """The per-version table: results, tumour rate, the single scans' mean confidence, first and last day."""
    models = store.by_model(shown)
    model_totals = suppress_group([m.total for m in models])
    # the versions' tumours add up to the headline's (rate times count each): a version's rate withheld alone was
    # the headline's tumours minus the others', so its rate is withheld with a partner's
    version_rates = complement(
        [m.total for m in models],
        [
            safe_rate(m.tumour, m.total) if n is not None and not lone else None
            for m, n in zip(models, model_totals, strict=True)
        ],
    )
    singles = {(m.model_name, m.model_version): m for m in store.by_model(scans_only)}
    rows = []
    for m, scans, version_rate in zip(models, model_totals, version_rates, strict=True):
        single = singles.get((m.model_name, m.model_version))
        counted = None if scans is None else suppress_small(single.total if single else 0)
        rows.append(
            VersionRow(
                model=f"{m.model_name} {m.model_version}",
                scans=scans,
                tumour_rate=version_rate,
                mean_confidence=single.mean_confidence if single and counted else None,
                single_scans=counted,
                first=local_day(m.first, timezone) if scans is not None else None,
                last=local_day(m.last, timezone) if scans is not None else None,
            )
        )
    return tuple(rows)


def partial_periods(board: Dashboard, today: date) -> str | None:
    """Which of the board's periods hold fewer days than a whole period (the range cuts a week or a month, or the
    period is still going on), and the days of the range after today (a range chosen in a zone already on tomorrow:
    its empty bar read as a day without service), said so that a short bar is not read as a fall: None when every
    one is whole."""
    if not board.periods:
        return None
    if board.period == "day":
        after = (board.end_day - max(today, board.start_day - timedelta(days=1))).days
        return f"{after} day{'s' * (after > 1)} of the range after today: no results yet." if after > 0 else None
    notes = []
    first, last = board.periods[0].start, board.periods[-1].start
    if first < board.start_day:
        notes.append(f"the first ({first.isoformat()}) starts before the range, on {board.start_day.isoformat()}")
    end = min(board.end_day, today)
    if next_period(last, board.period) - timedelta(days=1) > end:
        why = "is still going on" if end == today else f"ends with the range, on {board.end_day.isoformat()}"
        notes.append(f"the last ({last.isoformat()}) {why}")
    return f"Partial {board.period}s: {'; '.join(notes)}. Their counts cover only those days." if notes else None


def withheld_recently(
    rows: Sequence[PeriodRow], period: str, timezone: str, now: datetime | None, days: int = 7
) -> bool:
    """Whether a period whose count is withheld overlaps today or the ``days`` before it: then the count over them
    (the week's mean, today's) is withheld too, or it minus the shown periods would give the withheld count back."""
    local_today = local_day(now, timezone)
    first = local_today - timedelta(days)
    return any(r.scans is None and r.start <= local_today and next_period(r.start, period) > first for r in rows)


def recent_gives_back(
    rows: Sequence[PeriodRow], period: str, timezone: str, now: datetime | None, today: int, week: int
) -> bool:
    """Whether today's count or the last 7 days' (their mean times 7), taken from the shown periods around them,
    leave 1 to 4, either way: days never shown, a small count given back by subtraction (a week of 6 beside "Today
    so far" 5; a month of 25 less today's 6 and the week's 16; a week of 17 less a range of 25 begun inside it,
    today's 10 aside)."""
    local_today = local_day(now, timezone)
    first = local_today - timedelta(7)
    current = [r.scans for r in rows if r.scans is not None and r.start <= local_today < next_period(r.start, period)]
    around = [r for r in rows if r.start <= local_today and next_period(r.start, period) > first]
    left = [n - today for n in current]
    if around and all(r.scans is not None for r in around):  # days in them and not in the week, or the other way
        spare = sum(r.scans or 0 for r in around) - today - week  # round (a range starting or ending inside it)
        left += [spare, spare + week, spare + today]
    return any(0 < abs(n) < SMALL_CELL for n in left)


def _recent_counts(
    store: Dashboards, shown: Filters, timezone: str, unit: str, now: datetime | None
) -> tuple[int, int]:
    """Today's count and the last 7 whole days' (before today), in ``unit``, with the page's versions but whatever
    its date range: live figures mean the same counted per result or per study."""
    local_today = local_day(now, timezone)
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


def model_versions(store: Dashboards, actor: Actor) -> dict[str, str]:
    """Each model version the filter offers, with the models that wrote it: the filter and the quality board select
    by version, so two models that share a version string (a name and version are free to set when training) are
    counted together, and their label says so rather than showing one merged row as one model's."""
    require(actor, STATISTICS)
    names: dict[str, set[str]] = {version: set() for version in store.model_versions()}
    for row in store.by_model(Filters()):
        names.setdefault(row.model_version, set()).add(row.model_name)
    return {version: _version_label(version, sorted(models)) for version, models in names.items()}


def _version_label(version: str, models: Sequence[str]) -> str:
    if len(models) > 1:
        return f"{version} ({' and '.join(models)}, counted together)"
    return f"{version} ({models[0]})" if models else version


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


@_one_state
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
    # the mean tumour probability (the x-bar chart and its drift alarm) over single scans: a series' score is no
    # probability on their scale, so a change in the share of studies moved the mean and raised the alarm
    scans = {d.day: d for d in store.daily_quality(replace(scope, kinds=("scan",)), timezone)}
    days = [scored_by_scans(d, scans.get(d.day)) for d in days]
    periods = roll_up_quality(days, period, start_day, end_day)
    rows, drift = quality_rows(periods, baseline_end)
    median, p90 = turnaround(store.turnaround_hours(scope))
    chosen = list(versions) or store.model_versions()
    overall = accuracy(store.confusion(scope))
    agreed = [p.agreed for p in periods]
    lone = lone_withheld(agreed, [a if r.agreement is not None else None for a, r in zip(agreed, rows, strict=True)])
    if lone:  # the one period withheld: every figure that sums the agreements would give it back
        overall = without_agreement(overall)
    return QualityBoard(
        rows=tuple(rows),
        drift=drift,
        overall=overall,
        per_version={
            version: without_agreement(accuracy) if lone else accuracy
            for version, accuracy in per_version_accuracy(
                {v: store.confusion(replace(scope, model_versions=(v,))) for v in chosen}
            ).items()
        },
        backlog=suppress_small(sum(d.shown - d.reviewed for d in days)),
        turnaround_median_h=median,
        turnaround_p90_h=p90,
    )
