"""What a supervisor monitors, from the stores' quality aggregates: agreement between the model and the
radiologists, the model's sensitivity and specificity against reviewed cases, flagged and refused rates, the review
backlog and turnaround, and drift against a baseline period with Shewhart control limits (a p-chart for the tumour
rate, an x-bar chart for the mean tumour probability). Small counts are withheld as everywhere
(:mod:`core.analytics.stats`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date

from core.analytics.stats import (
    SMALL_CELL,
    complement,
    period_start,
    safe_rate,
    suppress_group,
    suppress_small,
    wilson_interval,
)
from core.domain.results import TURNAROUND_CAP_H, DayQuality
from core.domain.times import period_starts
from core.model.decision import CLASSES, NEGATIVE_LABEL


@dataclass(frozen=True)
class QualityRow:
    start: date
    shown: int | None
    reviewed: int | None
    agreement: float | None
    agreement_interval: tuple[float, float] | None
    flagged_rate: float | None
    rejected_rate: float | None
    tumour_rate: float | None
    rate_limits: tuple[float, float] | None  # p-chart limits around the baseline rate, for this period's size
    mean_probability: float | None
    mean_limits: tuple[float, float] | None
    out_of_control: bool  # either measure below
    rate_out: bool = False  # the tumour rate outside its limits (each panel of the chart marks its own)
    mean_out: bool = False  # the mean tumour probability outside its limits
    scored: int | None = None  # its single scans, which the mean counts (withheld as ``shown``)
    empty: bool = False  # nothing saved in it, refused or not: its rates are of nothing, not withheld


@dataclass(frozen=True)
class Drift:
    baseline_start: date | None
    baseline_end: date | None
    baseline_rate: float | None
    baseline_mean: float | None
    alarms: tuple[date, ...]  # periods after the baseline outside a control limit
    single_scans: bool = True  # the range holds single scans

    @property
    def unchecked(self) -> str | None:
        """What the drift check could not check, and why (the baseline holds too few results: with the default
        baseline on a new site, the chart had no limits and the export said "not out of control", unsaid)."""
        missing = []
        if self.baseline_rate is None:
            missing.append(f"the tumour rate (it needs {SMALL_CELL} results in the baseline)")
        if self.baseline_mean is None and self.single_scans:  # a site reading series only has no mean to check
            missing.append(f"the mean tumour probability of single scans (it needs {SMALL_CELL} of them)")
        if not missing:
            return None
        where = f"from {self.baseline_start} to {self.baseline_end}" if self.baseline_start else "(no period in it)"
        return (
            f"Not checked for drift: {' nor '.join(missing)}; the baseline {where} holds too few. Choose a later "
            "baseline end (the baseline is the periods up to that day) so that it holds results."
        )

    @property
    def message(self) -> str | None:
        if not self.alarms:
            return None
        when = ", ".join(d.isoformat() for d in self.alarms[-3:])
        return (
            f"Out of control against the baseline ({self.baseline_start} to {self.baseline_end}): the tumour rate or "
            f"the mean tumour probability of single scans left its 3-sigma limits in the period(s) starting {when}."
        )


def roll_up_quality(
    days: Sequence[DayQuality], period: str, first: date | None = None, last: date | None = None
) -> list[DayQuality]:
    """Sum day rows into periods (each row's ``day`` becomes the period's start); with ``first`` and ``last`` every
    period of that range is listed, an empty one as zeros (an outage stays visible instead of a line drawn across
    it, as :func:`core.analytics.stats.roll_up`)."""
    totals: dict[date, list[float]] = {}
    if first is not None and last is not None:
        totals = {start: [0.0] * 9 for start in period_starts(first, last, period)}
    for row in days:
        bucket = totals.setdefault(period_start(row.day, period), [0.0] * 9)
        for k, value in enumerate(
            (
                row.shown,
                row.tumour,
                row.flagged,
                row.rejected,
                row.reviewed,
                row.agreed,
                row.probability_sum,
                row.probability_squares,
                row.scored_n,
            )
        ):
            bucket[k] += value
    return [
        DayQuality(start, *(int(v) for v in values[:6]), values[6], values[7], int(values[8]))
        for start, values in sorted(totals.items())
    ]


def quality_rows(periods: Sequence[DayQuality], baseline_end: date | None) -> tuple[list[QualityRow], Drift]:
    """Per period figures and the drift check against the periods up to ``baseline_end`` (None: the first half of
    the periods listed, which :func:`roll_up_quality` lists for the whole range)."""
    if baseline_end is None and periods:
        baseline_end = periods[max(0, (len(periods) - 1) // 2)].day
    base = [p for p in periods if baseline_end is not None and p.day <= baseline_end]
    # the periods' counts add up to totals shown elsewhere (the dashboard's scans, the overall reviewed), and so do
    # the tumours and the agreements their rates give back: each withheld as a group
    shown_counts, reviewed_counts, scored_counts = (
        suppress_group([p.shown for p in periods]),
        suppress_group([p.reviewed for p in periods]),
        suppress_group([p.scored_n for p in periods]),  # the single scans, which the histogram's total sums:
    )  # a mean's control limits give its count back (3 sd / sqrt(n)), so one withheld alone was the total minus them
    tumours = known_parts(periods, shown_counts, "tumour", "shown")
    agreed = known_parts(periods, reviewed_counts, "agreed", "reviewed")
    # flagged and refused scans add up to the headline's totals too (a rate beside the shown count gives its count)
    everything = [p.shown + p.rejected for p in periods]
    flagged_known, rejected_known = (
        known_parts(periods, shown_counts, part, everything) for part in ("flagged", "rejected")
    )
    rate0 = _baseline_rate(periods, base, tumours, shown_counts)
    m0 = sum(p.scored_n for p in base)  # the mean's own count (single scans on the board)
    mean0 = sum(p.probability_sum for p in base) / m0 if m0 >= SMALL_CELL else None
    sd0 = math.sqrt(max(sum(p.probability_squares for p in base) / m0 - mean0**2, 0.0)) if mean0 is not None else None
    rows, alarms = [], []
    known = (shown_counts, reviewed_counts, tumours, agreed, flagged_known, rejected_known, scored_counts)
    for p, shown, reviewed, tumour, agreement_known, flagged, rejected, scored in zip(periods, *known, strict=True):
        rate = safe_rate(p.tumour, p.shown) if tumour is not None else None
        limits = mean_limits = None
        if rate0 is not None and p.shown >= SMALL_CELL:
            half = 3 * math.sqrt(rate0 * (1 - rate0) / p.shown)
            limits = (max(0.0, rate0 - half), min(1.0, rate0 + half))
        mean = p.probability_sum / p.scored_n if scored is not None and p.scored_n >= SMALL_CELL else None
        if mean0 is not None and sd0 is not None and mean is not None:
            half = 3 * sd0 / math.sqrt(p.scored_n)
            mean_limits = (max(0.0, mean0 - half), min(1.0, mean0 + half))
        after = baseline_end is not None and p.day > baseline_end and shown is not None  # no alarm on a withheld
        # period: the banner named a period whose figures nobody could see
        rate_out = after and limits is not None and rate is not None and not limits[0] <= rate <= limits[1]
        mean_out = (
            after and mean_limits is not None and mean is not None and not mean_limits[0] <= mean <= mean_limits[1]
        )
        out = rate_out or mean_out
        if out:
            alarms.append(p.day)
        # a rate, its interval or its control limits give back the count they stand on: withheld with the count
        agreement = safe_rate(p.agreed, p.reviewed) if agreement_known is not None else None
        all_scans = p.shown + p.rejected
        if shown is None:
            rate = limits = mean = mean_limits = None
        rows.append(
            QualityRow(
                start=p.day,
                shown=shown,
                reviewed=reviewed,
                agreement=agreement,
                agreement_interval=wilson_interval(p.agreed, p.reviewed) if agreement is not None else None,
                # its count over the shown and the refused: with the refused withheld, it gave them back (5 / 32)
                flagged_rate=safe_rate(p.flagged, all_scans) if None not in (flagged, rejected) else None,
                rejected_rate=safe_rate(p.rejected, all_scans) if rejected is not None else None,
                tumour_rate=rate,
                rate_limits=limits,
                mean_probability=mean,
                mean_limits=mean_limits,
                out_of_control=out,
                rate_out=rate_out,
                mean_out=mean_out,
                scored=scored,
                empty=not all_scans,
            )
        )
    start = base[0].day if base else None
    single = any(p.scored_n for p in periods)
    return rows, Drift(start, baseline_end, rate0, mean0, tuple(alarms), single)


def _baseline_rate(
    periods: Sequence[DayQuality],
    base: Sequence[DayQuality],
    tumours: Sequence[int | None],
    counts: Sequence[int | None],
) -> float | None:
    """The drift baseline's tumour rate, from every baseline period whose count is shown: their withheld tumours
    come back from it only as a sum of two or more, as the complementary suppression allows, so one withheld alone
    is left out (one quiet weekend day with a withheld count switched the rate alarm off for the whole range,
    unsaid). Leaving out every withheld period dropped the days with 1-4 of either kind: the rate leant to 0 or
    100 % on a quiet site, its limits shrank to nothing, and normal days raised the alarm (83 % read 100 %, every
    80 % day flagged)."""
    days = {period.day for period in base}  # a set: `p in base` compared whole records, periods x base (0.3 s of
    # a 3-year board by day)
    visible = [(p, k) for p, k, n in zip(periods, tumours, counts, strict=True) if n is not None and p.day in days]
    hidden = sum(k is None for _, k in visible)
    counted = [p for p, k in visible if k is not None or hidden > 1]
    n0 = sum(p.shown for p in counted)
    return sum(p.tumour for p in counted) / n0 if n0 >= SMALL_CELL else None


def known_parts(
    periods: Sequence[DayQuality], counts: Sequence[int | None], part: str, whole: str | Sequence[int]
) -> tuple:
    """Each period's ``part`` (tumours, agreements, flagged or refused scans) where its rate may be shown: its
    ``whole`` (a field, or each period's value) shown and the rate safe; withheld as a group (:func:`complement`),
    so none is the total a rate elsewhere gives minus the others."""
    values = [int(getattr(p, part)) for p in periods]
    wholes = [int(getattr(p, whole)) for p in periods] if isinstance(whole, str) else list(whole)
    shown = [
        v if n is not None and safe_rate(v, w) is not None else None
        for v, w, n in zip(values, wholes, counts, strict=True)
    ]
    return complement(values, shown)


@dataclass(frozen=True)
class Accuracy:
    """The model against the radiologists' final labels (reviewed results only)."""

    reviewed: int | None
    agreement: float | None
    sensitivity: float | None
    sensitivity_interval: tuple[float, float] | None
    specificity: float | None
    specificity_interval: tuple[float, float] | None
    matrix: Mapping[tuple[str, str], int | None]

    @property
    def tumours_counted(self) -> int | None:
        """What the sensitivity stands on, as the page and the CSV tell "withheld" from "none": the reviewed count
        when a reviewed result was found a tumour, else 0 (nothing to count; it read "withheld", a figure kept
        back, in the per-version table and the CSV while the headline said none)."""
        if None in self.matrix.values():  # "none" beside withheld cells tells which cells are empty
            return self.reviewed
        return self.reviewed if any(final != NEGATIVE_LABEL for _, final in self.matrix) else 0

    @property
    def clear_counted(self) -> int | None:
        """What the specificity stands on (:attr:`tumours_counted`): reviewed results found without a tumour."""
        if None in self.matrix.values():
            return self.reviewed
        return self.reviewed if any(final == NEGATIVE_LABEL for _, final in self.matrix) else 0


def accuracy(confusion: Mapping[tuple[str, str], int]) -> Accuracy:
    total = sum(confusion.values())
    agreed = sum(n for (label, final), n in confusion.items() if label == final)
    positives = sum(n for (_, final), n in confusion.items() if final != NEGATIVE_LABEL)
    found = sum(n for (label, final), n in confusion.items() if final != NEGATIVE_LABEL and label != NEGATIVE_LABEL)
    negatives = total - positives
    cleared = sum(n for (label, final), n in confusion.items() if final == NEGATIVE_LABEL and label == NEGATIVE_LABEL)
    matrix = dict(zip(confusion, suppress_group(list(confusion.values())), strict=True))  # they add up to reviewed
    # a rate (and its interval) with the reviewed total shown gives back the sum of the cells it counts: shown only
    # when none of those cells is withheld (then it tells nothing the matrix does not)
    withheld = [cell for cell, n in matrix.items() if n is None]
    agreement = None if any(label == final for label, final in withheld) else safe_rate(agreed, total)
    sensitivity = None if any(final != NEGATIVE_LABEL for _, final in withheld) else safe_rate(found, positives)
    specificity = None if any(final == NEGATIVE_LABEL for _, final in withheld) else safe_rate(cleared, negatives)
    if withheld:  # every cell, none left out as empty: zeros beside withheld cells gave a withheld agreement back
        matrix = _withheld_zeros(matrix)  # (a day's every off-diagonal cell 0: every call agreed)
    return Accuracy(
        reviewed=suppress_small(total),
        agreement=agreement,
        sensitivity=sensitivity,
        sensitivity_interval=wilson_interval(found, positives) if sensitivity is not None else None,
        specificity=specificity,
        specificity_interval=wilson_interval(cleared, negatives) if specificity is not None else None,
        matrix=matrix,
    )


def turnaround(hours: Mapping[int, int]) -> tuple[float | None, float | None]:
    """(median, 90th percentile) of the hours to the first review, as the upper edge of the database's whole-hour
    bins: "within 6 h" for reviews taken 5 h 50 min (the bins' lower edges said "within 5 h", and 40 minutes "0 h");
    the stores' last bin, :data:`TURNAROUND_CAP_H` or more, has no upper edge: infinity (a review weeks later is not
    "within 721", and the bin below it, "within 720 h", read "720 h or more" when both were 720)."""
    total = sum(hours.values())
    if total < SMALL_CELL:
        return None, None

    def quantile(q: float) -> float:
        seen = 0
        for hour in sorted(hours):
            seen += hours[hour]
            if seen >= q * total:
                break
        return float(hour + 1) if hour < TURNAROUND_CAP_H else math.inf

    return quantile(0.5), quantile(0.9)


def scored_by_scans(day: DayQuality, scans: DayQuality | None) -> DayQuality:
    """``day`` with its probability sums those of its single scans only (none that day: nothing to average)."""
    if scans is None:
        return replace(day, probability_sum=0.0, probability_squares=0.0, scored=0)
    return replace(
        day, probability_sum=scans.probability_sum, probability_squares=scans.probability_squares, scored=scans.shown
    )


def _withheld_zeros(matrix: Mapping[tuple[str, str], int | None]) -> dict[tuple[str, str], int | None]:
    """``matrix`` over every class (:data:`CLASSES` and those in it) with its empty cells withheld as well."""
    labels = sorted({label for cell in matrix for label in cell} | set(CLASSES), key=str)  # a None final label too
    return {(a, b): matrix.get((a, b)) for a in labels for b in labels}


def without_agreement(board: Accuracy) -> Accuracy:
    """``board`` without the agreement, the cells of its matrix (the diagonal adds up to it, and the reviewed count
    minus the other cells too), and the sensitivity and specificity (each, with the interval that gives its count,
    sums cells of the matrix: with every final label a tumour, the tumours found were the agreements)."""
    return replace(
        board,
        agreement=None,
        matrix=_withheld_zeros(dict.fromkeys(board.matrix)),
        sensitivity=None,
        sensitivity_interval=None,
        specificity=None,
        specificity_interval=None,
    )


def per_version_accuracy(confusions: Mapping[str, Mapping[tuple[str, str], int]]) -> dict[str, Accuracy]:
    """Each version's accuracy, their reviewed counts (which add up to the overall one shown) withheld as a group."""
    reviewed = suppress_group([sum(c.values()) for c in confusions.values()])
    boards = [  # a count withheld (a small one's partner too) withholds its rates: 90.5 % beside it was 95 of 105
        replace(accuracy(confusion) if n is not None else without_agreement(accuracy(confusion)), reviewed=n)
        for confusion, n in zip(confusions.values(), reviewed, strict=True)
    ]
    # the versions' cells and agreements add up to the overall ones too: one version with a figure withheld alone
    # was the overall minus the others', so the smallest other version is withheld whole with it
    counts = [sum(c.values()) for c in confusions.values()]
    partial = [withholds(b) and n > 0 for b, n in zip(boards, counts, strict=True)]
    if sum(partial) == 1:
        others = [(n, k) for k, n in enumerate(counts) if n > 0 and not partial[k]]
        if others:
            k = min(others)[1]
            boards[k] = Accuracy(None, None, None, None, None, None, dict.fromkeys(boards[k].matrix))
    return dict(zip(confusions, boards, strict=True))


def withholds(board: Accuracy) -> bool:
    """Whether a figure of ``board`` is withheld: its count or a cell of its matrix (a rate is withheld only with a
    cell; one with nothing to count, such as sensitivity without a reviewed tumour, hides nothing)."""
    return board.reviewed is None or None in board.matrix.values()
