"""The one decision rule: calibrated probabilities -> the verdict, its confidence and whether it needs review.

Used by the app, the CLI, the batch CSV, the evaluator, training and the statistics alike:
- **verdict**: tumour when P(tumour) = 1 - P(no tumour) reaches ``threshold``, and then the most probable tumour
  type, so the verdict never contradicts the tumour probability shown beside it (a plain arg-max can say "no
  tumour" at P(tumour) = 0.55 when three tumour types share that mass). When the most probable type holds less
  than ``subtype_min_share`` of P(tumour), the verdict is ``"tumour"``: tumour, type uncertain.
- **confidence** of the decision: the probability that the tumour / no-tumour call is right, P(tumour) for a
  tumour verdict and 1 - P(tumour) for a no-tumour one. It is what the records store and the charts show.
- **review band**: a verdict whose P(tumour) lies in ``[low, high)`` needs a radiologist's review first. The bounds
  are chosen on validation data and stated in the model card (``decision``).
- **series rule** (:class:`SeriesRule`, the card's ``series``): one verdict for a whole series from its sections'
  tumour probabilities (:mod:`core.model.volume`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# the input gate's decisions (:mod:`core.model.gate`), as results keep them: shown, shown flagged, or refused
ACCEPTED, NEEDS_REVIEW, REJECTED = "accepted", "needs_review", "rejected"
UNKNOWN_TYPE = "tumour"  # tumour present, type not given (a data folder) or uncertain (a verdict)
# the one label that means "no tumour", for every model, record, review, statistic and report (a card naming another
# is refused: the stores and the statistics count tumours against this name)
NEGATIVE_LABEL = "notumor"
CLASSES = ("glioma", "meningioma", NEGATIVE_LABEL, "pituitary")  # the four every model reads and every board lists


def cut(value: Any, places: int) -> Any:
    """``value`` cut (never rounded up) to ``places`` decimals, as every probability and score is shown: rounded,
    0.2996 read "0.30 (below the series threshold 0.30)" and 0.0496 "5.0%", unflagged, beside a flagged "5.0%" in
    the review band (5%-89%); cut, a value shown at a threshold is at it or past it. (The float's own error, as in
    0.3 stored as 0.29999..., is not cut off.) A number, or an array of them (a table's column)."""
    scale = 10.0**places
    cut_off = np.floor(np.asarray(value, dtype=np.float64) * scale + 1e-6) / scale
    return float(cut_off) if cut_off.ndim == 0 else cut_off


def percent(probability: float) -> str:
    """A probability as the screen and the report state it, cut to one decimal (:func:`cut`): never "100.0%" nor
    "0.0%" (a calibrated model's rounding read as certainty it does not have, on a phantom too)."""
    if probability > 0.999:
        return ">99.9%"
    if probability < 0.001:
        return "<0.1%"
    return f"{cut(probability * 100, 1):.1f}%"


def two_places(probability: float) -> str:
    """A section's probability to two places, as the viewer, the scroller and the PDF print it: never "1.00" nor
    "0.00" (certainty the model does not have)."""
    return bounded(probability, 2)


def bounded(probability: float, places: int) -> str:
    """``probability`` cut to ``places`` decimals (:func:`cut`), never shown as certain: ">0.999" and "<0.001" at
    three."""
    step = 10.0**-places
    if probability > 1 - step:
        return f">{1 - step:.{places}f}"
    if probability < step:
        return f"<{step:.{places}f}"
    return f"{cut(probability, places):.{places}f}"


def ml_text(value: float) -> str:
    """A lesion volume as every screen, the PDF and the PACS report write it (the screen's 1.2 mL was the PDF's
    1.25): one decimal from 1 mL ("12.4"), two under it ("0.38"), and under 0.005 mL (a few voxels) "<0.01", never
    "0.00" (read as no lesion)."""
    if round(abs(value), 2) >= 1:  # 0.996 too: "1.0", never "1.00" beside it
        return f"{value:,.1f}"
    return "<0.01" if 0 < value < 0.005 else f"{value:.2f}"


def mm2_text(value: float) -> str:
    """A lesion area as every screen and the PDF write it: whole mm² from 10 ("342"), one decimal under it."""
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"


LABEL_NAMES = {  # how a label reads on the screen and in reports (one definition)
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "pituitary": "Pituitary tumour",
    "notumor": "No tumour",
    UNKNOWN_TYPE: "Tumour, type uncertain",
}
DEFAULT_REVIEW_BAND = (0.2, 0.8)


def label_name(label: str) -> str:
    """A label in words (:data:`LABEL_NAMES`; one it does not know, as it is)."""
    return LABEL_NAMES.get(label, label)


def decide(
    probabilities: np.ndarray,
    labels: Sequence[str],
    negative_label: str,
    threshold: float = 0.5,
    subtype_min_share: float | None = None,
) -> list[str]:
    """Rows of calibrated probabilities -> verdict labels (see the module docstring)."""
    labels = list(labels)
    positive = tumour_probabilities(probabilities, labels, negative_label) >= threshold
    tumour_label, share = subtype_choice(probabilities, labels, negative_label)
    uncertain = np.zeros(len(positive), bool)
    if subtype_min_share is not None and len(labels) > 2:
        uncertain = share < subtype_min_share
    return [
        (UNKNOWN_TYPE if vague else labels[int(t)]) if flag else negative_label
        for t, flag, vague in zip(tumour_label, positive, uncertain, strict=True)
    ]


def tumour_probabilities(probabilities: np.ndarray, labels: Sequence[str], negative_label: str) -> np.ndarray:
    """P(tumour) of each row of probabilities (in ``labels`` order): one less the negative class's."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(labels))
    return 1.0 - p[:, list(labels).index(negative_label)]


def subtype_choice(
    probabilities: np.ndarray, labels: Sequence[str], negative_label: str
) -> tuple[np.ndarray, np.ndarray]:
    """(the most probable tumour type of each row, as an index into ``labels``; its share of P(tumour)), which the
    verdict names when the share reaches the card's ``subtype_min_share``."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(labels))
    scores = p.copy()
    scores[:, list(labels).index(negative_label)] = -np.inf
    top = scores.argmax(axis=1)
    share = p[np.arange(len(p)), top] / np.maximum(tumour_probabilities(p, labels, negative_label), 1e-12)
    return top, share


def decision_confidence(tumour_probability: float | np.ndarray, is_tumour: bool | np.ndarray) -> Any:
    """The probability that the tumour / no-tumour call is right."""
    return np.where(is_tumour, tumour_probability, 1.0 - np.asarray(tumour_probability))


@dataclass(frozen=True)
class Decision:
    """A verdict: ``review_reasons`` is empty unless the verdict needs a radiologist's review before use."""

    label: str
    is_tumour: bool
    tumour_probability: float
    confidence: float
    review_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecisionRule:
    """Threshold, review band and subtype rule of one model (from its card)."""

    labels: tuple[str, ...] = CLASSES
    negative_label: str = NEGATIVE_LABEL
    threshold: float = 0.5
    review_band: tuple[float, float] = DEFAULT_REVIEW_BAND
    subtype_min_share: float | None = None

    @classmethod
    def from_card(cls, raw: Mapping[str, Any], labels: Sequence[str], negative_label: str) -> DecisionRule:
        decision = raw.get("decision") or {}
        if "threshold" in raw and "threshold" in decision and float(raw["threshold"]) != float(decision["threshold"]):
            raise ValueError("the card gives two thresholds (its own and its decision's) that disagree")
        band = decision.get("review_band", DEFAULT_REVIEW_BAND)
        share = decision.get("subtype_min_share")
        rule = cls(
            labels=tuple(labels),
            negative_label=negative_label,
            threshold=float(raw.get("threshold", decision.get("threshold", 0.5))),
            review_band=(float(band[0]), float(band[1])),
            subtype_min_share=None if share is None else float(share),
        )
        low, high = rule.review_band
        if not 0.0 <= low <= rule.threshold <= high <= 1.0:
            raise ValueError("the review band must hold the threshold and lie within [0, 1]")
        return rule

    def labels_of(self, probabilities: np.ndarray) -> list[str]:
        return decide(probabilities, self.labels, self.negative_label, self.threshold, self.subtype_min_share)

    def in_review_band(self, tumour_probability: np.ndarray | float) -> np.ndarray:
        return in_review_band(tumour_probability, self.review_band)

    def band_reason(self, tumour_probability: float) -> str:
        """Why a probability in the review band is flagged, as every place that says it words it."""
        low, high = self.review_band
        return f"tumour probability {percent(tumour_probability)} is in the review band ({low:.0%}-{high:.0%})"

    def apply(self, probabilities: Sequence[float]) -> Decision:
        """One row of calibrated probabilities (in ``labels`` order) -> the decision."""
        row = np.asarray(probabilities, dtype=np.float64)
        label = self.labels_of(row[None])[0]
        tumour_probability = float(tumour_probabilities(row, self.labels, self.negative_label)[0])
        is_tumour = label != self.negative_label
        confidence = float(decision_confidence(tumour_probability, is_tumour))
        reasons = []
        if self.in_review_band(tumour_probability):
            reasons.append(self.band_reason(tumour_probability))
        return Decision(label, is_tumour, tumour_probability, confidence, tuple(reasons))


def in_review_band(score: np.ndarray | float, band: tuple[float, float]) -> np.ndarray:
    """Whether each tumour probability (or series score) falls in the review band [low, high): sent to a reader."""
    low, high = band
    p = np.asarray(score, dtype=np.float64)
    return (p >= low) & (p < high)


# a series' score is no probability: a tumour series read "series tumour probability 45.9%" (below even odds); the
# screen, the PDF and the report sent to the PACS name it so
SERIES_SCORE = "the lowest tumour probability of its best run of neighbouring sections"

# what a verdict judged on fewer neighbouring sections than the series rule asks is said to rest on, wherever it is
# stated (viewer, PDF, SR): too few analysed, or a series too short for the rule (every section analysed: "fewer
# sections analysed" was untrue)
FEWER = "fewer neighbouring sections than the rule asks"


def rests_on(used: int, neighbours: int, applied: float) -> str:
    """What a verdict judged on fewer neighbouring sections than the rule asks says of it, fresh or reopened, on the
    screen and in the PDF (three wordings once: the same series read otherwise once saved)."""
    sections = "section" if used == 1 else "sections"
    return (
        f"the verdict rests on {used} neighbouring {sections} (the rule asks {neighbours}), judged at least by the "
        f"single-scan threshold ({applied:.2f})"
    )


def review_reason(used: int, neighbours: int) -> str:
    """Which of the two reasons sends a series verdict to review (it read "few neighbours, or in the uncertain
    band" on the screen and "fewer sections ..., or is uncertain" in the PDF, and the reader could not tell)."""
    if used < neighbours:
        sections = "section" if used == 1 else "sections"
        return f"it rests on {used} neighbouring {sections}, fewer than the rule's {neighbours}"
    return "its score is in the review band"


def _best(probabilities: Sequence[float | None], runs: list[list[int]], k: int) -> tuple[float, list[int]]:
    """The window of ``k`` neighbouring sections of ``runs`` whose lowest probability is highest, and that level."""
    best: tuple[float, list[int]] | None = None
    for run in runs:
        for start in range(len(run) - k + 1):
            window = run[start : start + k]
            level = min(float(probabilities[i]) for i in window)  # type: ignore[arg-type]
            if best is None or level > best[0]:
                best = (level, window)
    assert best is not None
    return best


@dataclass(frozen=True)
class SeriesRule:
    """Tumour when ``neighbours`` adjacent analysed sections all have tumour probability >= ``threshold``."""

    neighbours: int = 3
    threshold: float = 0.5
    fitted_on: str = "not fitted: the default of three neighbouring sections at 0.5"
    short_run: int | None = None  # a series too short for the rule: judged on this many sections too (see below)

    @classmethod
    def from_card(cls, raw: Mapping[str, Any] | None) -> SeriesRule:
        if not raw:
            return cls()
        short = int(raw["short_run"]) if raw.get("short_run") is not None else None
        rule = cls(int(raw["neighbours"]), float(raw["threshold"]), str(raw.get("fitted_on", "")), short)
        if rule.neighbours < 1 or not 0.0 < rule.threshold < 1.0:
            raise ValueError("the series rule needs at least one neighbour and a threshold inside (0, 1)")
        if short is not None and not 1 <= short < rule.neighbours:
            raise ValueError("the series rule's short run is at least one section and fewer than its neighbours")
        return rule

    def best_window(
        self,
        probabilities: Sequence[float | None],
        breaks: Collection[int] = (),
        floor: float | None = None,
        size: int | None = None,
    ) -> tuple[float | None, list[int]]:
        """(the highest level ``k`` neighbouring sections all reach, the indices of those sections). ``None``
        entries are skipped sections and ``breaks`` the sections after a gap in the positions: both break runs.
        With no run of ``k``, the longest run sets a smaller ``k`` (the caller warns); with nothing analysed the
        score is None and the window empty. ``size``: the window's own size (a stored verdict's, found again).

        A series too short for the rule to slide along (no run longer than ``k``: every window was the whole run,
        so one normal end section cleared it) that the rule does not call tumour is judged on its best
        ``short_run`` neighbouring sections (the card's; none: not at all) at the threshold a verdict on that many
        is judged by (at least ``floor``, the single-scan threshold), when those reach it: five frames at 0.06,
        0.38, 0.79, 0.98 and 0.98 were "no tumour", and the same frames less the first would have been called
        tumour. Never on the volumes the rule was fitted and measured on (runs of six sections or more there): on
        5-section windows of them it finds 85 % of the tumour windows where the rule alone found 61 %, and clears
        94 % of the tumour-free ones (98 %)."""
        runs: list[list[int]] = [[]]
        for i, p in enumerate(probabilities):
            if p is None or i in breaks:
                runs.append([])
            if p is not None:
                runs[-1].append(i)
        runs = [run for run in runs if run]
        if not runs:
            return None, []
        longest = max(len(run) for run in runs)
        k = min(size or self.neighbours, longest)  # a stored size past the runs found again: the longest
        best = _best(probabilities, runs, k)
        short = self.short_run
        too_short = size is None and floor is not None and short and longest <= self.neighbours and k > short
        if too_short and best[0] < self.threshold_for(k, floor):  # type: ignore[arg-type]
            window = _best(probabilities, runs, short)  # type: ignore[arg-type]
            return window if window[0] >= self.threshold_for(short, floor) else best  # type: ignore[arg-type]
        return best

    def score(
        self, probabilities: Sequence[float | None], breaks: Collection[int] = (), floor: float | None = None
    ) -> tuple[float | None, int]:
        """(the series' score, the ``k`` it used): see :meth:`best_window`."""
        level, window = self.best_window(probabilities, breaks, floor)
        return level, len(window)

    def threshold_for(self, used: int, floor: float) -> float:
        """The threshold a score resting on ``used`` neighbouring sections must reach: the rule's own when it has its
        neighbours; at least ``floor`` (the single-scan threshold) when fewer could be analysed, for which the rule
        was not fitted (one section at 0.3 is no tumour as a series either)."""
        return self.threshold if used >= self.neighbours else max(self.threshold, floor)

    def calls(self, score: float | None, used: int, floor: float) -> bool:
        """The series call from its :meth:`score`: what the app serves (:func:`core.model.volume.analyse_volume`)
        and what the rule's fitting and figures count (:meth:`calls_tumour`), one function."""
        return score is not None and score >= self.threshold_for(used, floor)

    def calls_tumour(self, probabilities: Sequence[float | None], floor: float, breaks: Collection[int] = ()) -> bool:
        """The series call from the sections' probabilities (:meth:`calls`)."""
        return self.calls(*self.score(probabilities, breaks, floor), floor)

    def to_json(self) -> dict[str, Any]:
        short = {"short_run": self.short_run} if self.short_run else {}
        return {"neighbours": self.neighbours, "threshold": self.threshold, "fitted_on": self.fitted_on} | short
