"""Dashboard figures derived from database aggregates (never from raw records): periods, rates, the small-count
rule.

The small-count rule, one for everything a non-admin sees: a count from 1 to ``SMALL_CELL - 1`` is withheld, and
so is any rate from which such a count could be recovered (fewer than ``SMALL_CELL`` scans, tumours or non-tumours
behind it). Zero is shown: an empty period is a fact (an outage day), not a patient. Counts that add up to a total
shown elsewhere are withheld together (:func:`suppress_group`): one withheld count would be the total minus the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from core.domain.results import DayCount
from core.domain.times import PERIODS, period_start, period_starts

__all__ = [
    "PERIODS",
    "SMALL_CELL",
    "WITHHELD",
    "WITHHELD_REASON",
    "PeriodRate",
    "complement",
    "lone_withheld",
    "period_start",
    "roll_up",
    "safe_rate",
    "suppress_classes",
    "suppress_group",
    "suppress_small",
    "wilson_interval",
]
SMALL_CELL = 5
WITHHELD = "withheld"  # how a withheld count reads everywhere (page, charts, CSV): never 0, blank or "<5"
WITHHELD_REASON = (
    f"withheld: fewer than {SMALL_CELL}, or hidden beside such a count so that it cannot be worked out from the total "
    "(small counts can identify patients)"
)


@dataclass(frozen=True)
class PeriodRate:
    """Scans and tumour verdicts in one period starting on ``start`` (a local date)."""

    start: date
    total: int
    tumour: int

    @property
    def rate(self) -> float:
        return self.tumour / self.total if self.total else 0.0


def roll_up(
    days: Sequence[DayCount], period: str, first: date | None = None, last: date | None = None
) -> list[PeriodRate]:
    """Sum day rows into days, Monday-start weeks or calendar months (days come from the database).

    With ``first`` and ``last`` every period of that range is listed, those without scans as zero: a day the
    service was down stays visible instead of vanishing from the chart and the export.
    """
    totals: dict[date, list[int]] = {}
    if first is not None and last is not None:
        totals = {start: [0, 0] for start in period_starts(first, last, period)}
    for row in days:
        bucket = totals.setdefault(period_start(row.day, period), [0, 0])
        bucket[0] += row.total
        bucket[1] += row.tumour
    return [PeriodRate(start, total, tumour) for start, (total, tumour) in sorted(totals.items())]


def suppress_small(count: int) -> int | None:
    """Counts from 1 to :data:`SMALL_CELL` - 1 are withheld (None) so small cells cannot re-identify patients (one
    rule everywhere: no caller sets another threshold)."""
    return None if 0 < count < SMALL_CELL else count


def suppress_group(counts: Sequence[int]) -> tuple[int | None, ...]:
    """Counts that add up to a figure shown elsewhere (the class mix, the confidence bins, the periods or the
    versions to the total): each withheld as :func:`suppress_small`, and when that withholds exactly one, the
    smallest other non-zero count too (complementary suppression), so that no withheld count is the total minus
    the others shown."""
    return complement(counts, [suppress_small(n) for n in counts])


def complement(counts: Sequence[int], shown: Sequence[int | None]) -> tuple[int | None, ...]:
    """``shown`` (``counts`` with some withheld as None) with the smallest other non-zero count withheld too when
    exactly one non-zero count is withheld: one alone would be the group's total minus the rest."""
    kept = list(shown)
    if sum(v is None and n > 0 for n, v in zip(counts, kept, strict=True)) == 1:
        others = [(n, k) for k, (n, v) in enumerate(zip(counts, kept, strict=True)) if v is not None and n > 0]
        if others:
            kept[min(others)[1]] = None
    return tuple(kept)


def lone_withheld(counts: Sequence[int], shown: Sequence[int | None]) -> bool:
    """Whether one non-zero count alone is withheld (:func:`complement` found no partner: every other is zero):
    then the group's total, wherever it shows (a rate times its count), gives it back and must be withheld too."""
    return sum(v is None and n > 0 for n, v in zip(counts, shown, strict=True)) == 1


def suppress_classes(labels: Sequence[str], counts: Sequence[int], negative: str) -> tuple[int | None, ...]:
    """The class mix: it adds up to the total, and its tumour classes add up to the tumours (which a tumour rate
    beside the total gives back), so it is withheld as both groups: glioma 3 withheld with no tumour 45 as its
    partner was 53 tumours minus meningioma 50."""
    shown = list(suppress_group(counts))
    tumours = [k for k, label in enumerate(labels) if label != negative]
    inner = complement([counts[k] for k in tumours], [shown[k] for k in tumours])
    for k, value in zip(tumours, inner, strict=True):
        shown[k] = value
    if None in shown:  # an empty class beside withheld ones says every call was of the others: a day's 3 results,
        shown = [None if n == 0 else v for n, v in zip(counts, shown, strict=True)]  # no "no tumour", all tumours
    return tuple(shown)


def safe_rate(part: int, total: int) -> float | None:
    """``part / total``, or None when the total, the part or the rest is a withheld small count (or zero total)."""
    if total < SMALL_CELL or 0 < part < SMALL_CELL or 0 < total - part < SMALL_CELL:
        return None
    return part / total


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion (None for n = 0)."""
    if n <= 0:
        return None
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
