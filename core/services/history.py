"""A patient's history: every result and series saved under one pseudonymous reference, in time order, and a
series set beside an earlier one of the same patient at the matching position.

Two studies of one head are rarely in the same coordinates (another day, another scanner, another position in the
bore), so sections are matched by their relative place along the analysed part of each series (from the first to
the last section with a verdict), not by millimetres. Reading a history is an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.domain.results import Record, WorklistQuery
from core.services import audit
from core.services.access import HISTORY, Actor, require
from core.services.studies import SeriesView
from core.storage.protocol import Store

LIMIT = 500


def patient_history(store: Store, actor: Actor, patient_ref: str) -> list[Record]:
    """The patient's results (scans and series), oldest first."""
    require(actor, HISTORY)
    records = store.worklist(WorklistQuery(reviewed=None, patient_ref=patient_ref), LIMIT)
    audit.record(store, actor, "history", patient_ref, results=len(records))  # the keyed reference, never as typed
    return sorted(records, key=lambda r: r.created_at)


def _extent(view: SeriesView) -> tuple[int, int]:
    analysed = [i for i, p in enumerate(view.curve) if p is not None]
    return (analysed[0], analysed[-1]) if analysed else (0, len(view.curve) - 1)


def matching_section(current: SeriesView, index: int, prior: SeriesView) -> int:
    """The prior's section at the same relative place along the analysed head as ``index`` in ``current``."""
    start, end = _extent(current)
    share = 0.5 if end == start else min(max((index - start) / (end - start), 0.0), 1.0)
    prior_start, prior_end = _extent(prior)
    return round(prior_start + share * (prior_end - prior_start))


@dataclass(frozen=True)
class Change:
    """How the tumour probability moved between a prior series and the current one."""

    series_before: float | None
    series_now: float | None
    section_before: float | None
    section_now: float | None

    @property
    def series_change(self) -> float | None:
        if self.series_before is None or self.series_now is None:
            return None
        return self.series_now - self.series_before

    @property
    def section_change(self) -> float | None:
        if self.section_before is None or self.section_now is None:
            return None
        return self.section_now - self.section_before


def change(current: SeriesView, index: int, prior: SeriesView) -> tuple[int, Change]:
    """The matching prior section and the change in tumour probability, for the series and at this section."""
    matched = matching_section(current, index, prior)
    return matched, Change(prior.score, current.score, prior.curve[matched], current.curve[index])
