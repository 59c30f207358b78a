"""How labels and counts read on the screen: the one place both the scan panels and the series viewer take them
from (the display names themselves are the model's, :data:`core.model.decision.LABEL_NAMES`, shared with the PDF)."""

from __future__ import annotations

from core.model.decision import LABEL_NAMES

__all__ = ["LABEL_NAMES", "NOT_KNOWN", "count_of", "lesion_change", "lesion_size", "pretty"]

NOT_KNOWN = "—"  # an unknown size or a change that cannot be computed
_UNITS = {"mL": ("{:,.2f}", " mL"), "mm2": ("{:,.1f}", " mm²"), "px": ("{:,.0f}", " px")}


def count_of(n: int, noun: str) -> str:
    """ "1 section", "2 sections"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def pretty(label: str) -> str:
    return LABEL_NAMES.get(label, label)


def lesion_size(size: float | None, unit: str | None) -> str:
    """ "3.75 mL", "105.0 mm²", "1,234 px"; "—" when not measured."""
    if size is None or unit not in _UNITS:
        return NOT_KNOWN
    number, suffix = _UNITS[unit]
    return number.format(size) + suffix


def lesion_change(change: float | None, unit: str | None, percent: float | None) -> str:
    """ "+1.20 mL (+32%)"; without the percentage when the previous size was 0; "—" when there is no change."""
    if change is None or unit not in _UNITS:
        return NOT_KNOWN
    number, suffix = _UNITS[unit]
    text = ("+" if change >= 0 else "") + number.format(change) + suffix
    return text if percent is None else f"{text} ({percent:+.0f}%)"
