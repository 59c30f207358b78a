"""Which result a table selection means, by result id, never by row position alone.

A table's selection is a row position in the table as it was drawn; after a filter change or a review the same
position is another result, or none (the Worklist once raised IndexError there). :func:`table_key` gives each
distinct list its own widget, so a stale selection never carries over, and :func:`chosen_id` keeps the result that
was open while it is still listed, and says so when it is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date
from typing import Any


def table_key(prefix: str, ids: Sequence[str]) -> str:
    """A widget key that changes whenever the listed results (or their order) change."""
    return f"{prefix}-{hashlib.sha256('|'.join(ids).encode()).hexdigest()[:12]}"


def chosen_id(ids: Sequence[str], rows: Sequence[int], previous: str | None) -> tuple[str, str | None]:
    """(the id to open, a note for the reader or None). ``rows``: the selected row positions of this run's table;
    ``previous``: the id open before (None: nothing, or the reader moved on on purpose)."""
    if rows and 0 <= rows[0] < len(ids):
        return ids[rows[0]], None
    if previous in ids:
        return previous, None  # type: ignore[return-value]
    if previous is None:
        return ids[0], None
    return ids[0], "The result that was open is not in this list any more (the filters changed): showing the first."


def dates_within(dates: Any, last: date) -> Any:
    """A date range kept across reruns, its days after ``last`` brought back to it (the widget refuses a value past
    its ``max_value``: a range ending on tomorrow in a zone ahead, kept into one behind, stopped the page with an
    error until it was reloaded); anything else as it is."""
    if isinstance(dates, tuple | list):
        return tuple(min(day, last) if isinstance(day, date) else day for day in dates)
    return dates
