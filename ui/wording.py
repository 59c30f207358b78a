"""How labels and counts read on the screen: the one place both the scan panels and the series viewer take them
from (the display names themselves are the model's, :data:`core.model.decision.LABEL_NAMES`, shared with the PDF)."""

from __future__ import annotations

import math
import re

from core.analytics.quality import TURNAROUND_CAP_H
from core.model.decision import LABEL_NAMES, cut, label_name, percent, two_places
from core.services.series_views import scanner_series

__all__ = [
    "CALL_CONFIDENCE",
    "CONFIDENCE_HELP",
    "LABEL_NAMES",
    "REFUSED",
    "REFUSED_FLAG",
    "count_of",
    "flag_shown",
    "hours_within",
    "percent",
    "plain",
    "pretty",
    "probability_shown",
    "reason_shown",
    "series_kind",
    "two_places",
    "verdict_shown",
]

# what the confidence is: fitted on validation scans (calibration), not a promise at another hospital
CALL_CONFIDENCE = "confidence in the tumour / no-tumour call (calibrated at the training hospitals)"
CONFIDENCE_HELP = (
    "Probabilities are calibrated on the model's validation scans, from the hospitals it trained on (about 2-3 "
    "points off there, measured out of sample); at another hospital or scanner they are further off (about 10 "
    "points) and the model is right less often (the sidebar's model figures). Never shown as 100%: no call is "
    "certain."
)


def count_of(n: int, noun: str) -> str:
    """ "1 section", "2 sections"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def pretty(label: str) -> str:
    return label_name(label)


# a brain slice at the vertex ("too little brain") is refused as a radiograph is: lists name the refusal, the panels
# its reasons (every list read "not a brain MRI" for both)
REFUSED = "Refused by the input gate"
REFUSED_FLAG = "refused"


def flag_shown(record) -> str:
    """A saved result's flag as lists show it: the review flag until the result is reviewed (the review answered
    it: History showed none, the Worklist "needs review" still), a refusal always."""
    if record.gate == "rejected":
        return REFUSED_FLAG
    return "needs review" if record.gate == "needs_review" and not record.review_count else ""


def verdict_shown(record) -> str:
    """A saved result's verdict as lists show it: a scan the input gate refused has none (its label, a class the
    model picked for something that is not a brain MRI, read as a diagnosis on the Worklist and in History)."""
    return REFUSED if record.gate == "rejected" else pretty(record.label)


SCORE_COLUMN = "tumour probability (series: score)"  # a series' is its rule's score, no probability


def probability_shown(record) -> str:
    """The tumour probability as lists show it, three decimals (so that the column sorts as numbers do) held between
    0.001 and 0.999 (0.9996 read 1.000, a certainty the result panel never states: ">99.9%"), and a dash for a
    refused scan (as :func:`verdict_shown`; a numeric column showed the word "None")."""
    if record.gate == "rejected":
        return "—"
    return f"{cut(min(max(record.tumour_probability, 0.001), 0.999), 3):.3f}"  # cut, as every figure shown


def reason_shown(code: str) -> str:
    """A review's reason code as the form and the review history show it ("wrong type"; the history read
    "wrong_type")."""
    return code.replace("_", " ")


def hours_within(hours: float) -> str:
    """A review turnaround (an upper bin edge) as the board states it; the stores' last bin (no edge) is "or more"."""
    return f"{TURNAROUND_CAP_H} h or more" if math.isinf(hours) else f"within {hours:.0f} h"


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#!|<>$~])")  # what starts a link, an image, emphasis, code, HTML, maths


def plain(text: object) -> str:
    """Text from outside the app (a name, a PACS's series number, a reason built from either) as Markdown shows it
    literally: every mark Markdown would read escaped (a name with underscores read in italics, and a link in a
    PACS's answer was a link on the page)."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def result_kind(record) -> str:
    """A saved result in a sentence: "scan", or "series of 6 sections" (the panel's help, the Worklist's open line)."""
    return f"series of {count_of(record.section_count or 0, 'section')}" if record.kind == "series" else "scan"


def series_kind(record) -> str:
    """A saved series as lists name it: its number on the Study page (and the scanner's), its plane and its
    sections ("series 2 (DICOM series 5), coronal, 12 sections"; two "series" rows of one study read the same)."""
    geometry = record.geometry or {}
    number = f" {geometry['series_number']}" if geometry.get("series_number") else ""
    number += scanner_series(geometry)
    plane = f", {geometry['plane']}" if geometry.get("plane") else ""
    count = record.section_count or 0
    return f"series{number}{plane}, {count} section{'s' * (count != 1)}"
