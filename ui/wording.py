"""How labels and counts read on the screen: the one place both the scan panels and the series viewer take them
from (the display names themselves are the model's, :data:`core.model.decision.LABEL_NAMES`, shared with the PDF)."""

from __future__ import annotations

from core.model.decision import LABEL_NAMES

__all__ = ["LABEL_NAMES", "count_of", "pretty"]


def count_of(n: int, noun: str) -> str:
    """ "1 section", "2 sections"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def pretty(label: str) -> str:
    return LABEL_NAMES.get(label, label)
