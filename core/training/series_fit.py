"""Fitting the series rule (:class:`core.model.decision.SeriesRule`) on validation volumes, never single slices.

Volumes come from the sources that hold whole heads: each LGG patient's sequence (every slice, ordered by slice
number; a glioma in every patient: a tumour volume) and each Normal-heads subject's sequence and plane (nine
sections through a healthy head: a tumour-free volume). Each LGG volume also gives tumour-free stretches: runs of
at least :data:`STRETCH` sections that lie :data:`MARGIN` sections or more from any tumour section, which hold the
hard cases (the top and bottom of the head) from the same scanners as the tumours.

Only volumes the model never trained on are used: the validation split's, or every volume of a source the card's
``data.folders`` shows the model was not trained on at all (a card that does not list its folders is taken to have
trained on every source). The rule kept is the one with the fewest false tumour volumes among those that find at
least :data:`MIN_SENSITIVITY` of the tumour volumes (the most balanced one when none does), preferring more
neighbours and then a higher threshold at a tie.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.splits import split_file_of
from core.imaging import read_scan_file
from core.model.analysis import analyse_scans
from core.model.classifier import Classifier
from core.model.decision import DecisionRule, SeriesRule
from core.model.gate import REJECTED
from core.training.card_io import write_card
from core.training.sources import Item, discover

VOLUME_SOURCES = ("LGG", "Normal-heads")
NEIGHBOURS = (1, 2, 3, 4, 5)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
MIN_SENSITIVITY = 0.95
STRETCH, MARGIN = 6, 3
_LGG = re.compile(r"^(TCGA_.+)_(\d+)_(t1|t1c|flair)$")
_HEADS = re.compile(r"^(subj\d+_[a-z0-9]+_[a-z]+)_(\d+)$")


def volume_key(item: Item) -> tuple[str, int] | None:
    """(the volume an image belongs to, its position in it) from its file name; None for a lone slice."""
    pattern = _LGG if item.source == "LGG" else _HEADS if item.source == "Normal-heads" else None
    match = pattern.match(item.path.stem) if pattern else None
    if not match:
        return None
    if item.source == "LGG":
        return f"{match.group(1)}_{match.group(3)}", int(match.group(2))
    return match.group(1), int(match.group(2))


def volumes(items: list[Item]) -> dict[str, list[Item]]:
    grouped: dict[str, list[tuple[int, Item]]] = defaultdict(list)
    for item in items:
        key = volume_key(item)
        if key is not None:
            grouped[key[0]].append((key[1], item))
    return {name: [item for _, item in sorted(members, key=lambda m: m[0])] for name, members in grouped.items()}


def tumour_free_stretches(curve: list[float | None], tumour: list[bool]) -> list[list[float | None]]:
    """Runs of sections at least MARGIN sections from every tumour section, STRETCH long or more."""
    marks = [i for i, t in enumerate(tumour) if t]
    far = [all(abs(i - m) >= MARGIN for m in marks) for i in range(len(curve))]
    runs, current = [], []
    for i, ok in enumerate(far):
        if ok:
            current.append(curve[i])
        else:
            if len(current) >= STRETCH:
                runs.append(current)
            current = []
    if len(current) >= STRETCH:
        runs.append(current)
    return runs


def curves(classifier: Classifier, members: list[Item]) -> list[float | None]:
    """Each section's tumour probability, or None where the series analysis would skip it."""
    results = analyse_scans([read_scan_file(item.path) for item in members], classifier)
    return [
        None if isinstance(r, Exception) or r.prediction.gate.decision == REJECTED else r.prediction.tumour_probability
        for r in results
    ]


def choose(
    positives: list[list[float | None]],
    negatives: list[list[float | None]],
    floor: float = DecisionRule.threshold,
    short_run: int | None = None,
) -> dict[str, Any]:
    """The rule (see the module docstring) and its figures on these volumes, each call made as the app makes it
    (``floor``: the card's single-scan threshold, for scores resting on fewer neighbours than the rule's;
    ``short_run``: the card's rule for series too short for it, kept by every rule it still fits:
    :func:`with_short_run`)."""
    table = []
    for k in NEIGHBOURS:
        for t in THRESHOLDS:
            rule = with_short_run(SeriesRule(k, t), short_run)

            def called(curve: list[float | None], rule: SeriesRule = rule) -> bool:
                return rule.calls_tumour(curve, floor)

            sensitivity = float(np.mean([called(c) for c in positives])) if positives else 0.0
            specificity = float(np.mean([not called(c) for c in negatives])) if negatives else 0.0
            table.append((k, t, sensitivity, specificity))
    good = [row for row in table if row[2] >= MIN_SENSITIVITY]
    pool = good or table
    key = (lambda r: (r[3], r[0], r[1])) if good else (lambda r: (r[2] + r[3], r[0], r[1]))
    k, t, sensitivity, specificity = max(pool, key=key)
    return {"neighbours": k, "threshold": t, "sensitivity": sensitivity, "specificity": specificity}


def with_short_run(rule: SeriesRule, short_run: int | None) -> SeriesRule:
    """``rule`` judging series too short for it on ``short_run`` sections too, where that is fewer than its own
    neighbours (a refit kept the card's rule for short series: dropped, a five-frame series with two sections at
    0.98 was cleared by its normal end frame again, though the rule was the same)."""
    kept = short_run if short_run is not None and short_run < rule.neighbours else None
    return SeriesRule(rule.neighbours, rule.threshold, rule.fitted_on, kept)


@dataclass(frozen=True)
class Curves:
    """Each validation volume's section probabilities as the app reads them (None: a skipped section): the LGG
    tumour volumes with which of their sections show the tumour, and the Normal-heads volumes."""

    tumour: list[tuple[list[float | None], list[bool]]]
    normal: list[list[float | None]]


def validation_curves(classifier: Classifier, card_path: Path, root: Path) -> Curves:
    """The volumes the series rule is fitted and measured on (see the module docstring), read by ``classifier``."""
    card = json.loads(card_path.read_text())
    folders = card.get("data", {}).get("folders")
    trained_on = set(VOLUME_SOURCES) if folders is None else {Path(folder).name for folder in folders}
    listed = {(root / rel).resolve() for rel, _ in json.loads(split_file_of(card_path).read_text())["validation"]}
    chosen: list[Item] = []
    for source in VOLUME_SOURCES:
        if (root / source).is_dir():
            found = discover([root / source])
            chosen += found if source not in trained_on else [i for i in found if i.path.resolve() in listed]
    tumour, normal = [], []
    for members in volumes(chosen).values():
        curve = curves(classifier, members)
        if members[0].source == "LGG":
            tumour.append((curve, [m.label != "notumor" for m in members]))
        else:
            normal.append(curve)
    return Curves(tumour, normal)


def fit_series(
    card_path: Path, root: Path, log: Callable[[str], None] = print, restamp: bool = False
) -> dict[str, Any]:
    """Fit the series rule for the model of ``card_path`` and write it into the card's ``series`` (with
    ``restamp``, under the version that names it: :func:`core.training.card_io.restamped`)."""
    classifier = Classifier.from_card(card_path)
    card = json.loads(card_path.read_text())
    read = validation_curves(classifier, card_path, root)
    positives = [curve for curve, _ in read.tumour]
    negatives = read.normal
    stretches = [part for curve, marks in read.tumour for part in tumour_free_stretches(curve, marks)]
    if not positives or not negatives:
        raise ValueError("fitting the series rule needs tumour volumes (LGG) and tumour-free ones (Normal-heads)")
    floor, short_run = classifier.card.rule.threshold, classifier.card.series.short_run
    fitted = choose(positives, negatives + stretches, floor, short_run)
    rule = with_short_run(SeriesRule(fitted["neighbours"], fitted["threshold"]), short_run)
    check = {
        "normal_heads_specificity": share_right(rule, negatives, False, floor),
        "tumour_free_stretch_specificity": share_right(rule, stretches, False, floor),
        "tumour_volume_sensitivity": share_right(rule, positives, True, floor),
    }
    if short_run is not None and rule.short_run is None:
        log(f"series rule: its rule for short series ({short_run} sections) is dropped: the rule asks no more")
    before = card.get("series") or {}
    same = rule.short_run and (before.get("neighbours"), before.get("threshold")) == (rule.neighbours, rule.threshold)
    measured = {"short_run_measured": before["short_run_measured"]} if same and "short_run_measured" in before else {}
    card["series"] = (
        rule.to_json()
        | {
            "fitted_on": f"{len(positives)} LGG tumour volumes, {len(negatives)} Normal-heads volumes and "
            f"{len(stretches)} tumour-free LGG stretches the model never trained on: the fewest false tumour volumes "
            f"among rules finding at least {MIN_SENSITIVITY:.0%} of tumour volumes",
            "validation": {"volumes": {"tumour": len(positives), "normal": len(negatives), "stretches": len(stretches)}}
            | check,
        }
        | measured
    )  # the short-run rule's own figures, while they are of the rule the card serves
    write_card(card_path, card, restamp=restamp)
    log(f"series rule: {json.dumps(card['series'])}")
    return card["series"]


def share_right(
    rule: SeriesRule, group: list[list[float | None]], tumour: bool, floor: float = DecisionRule.threshold
) -> float | None:
    """The share of ``group`` the rule calls right (tumour volumes called tumour, or the others not), as served."""
    if not group:
        return None
    calls = [rule.calls_tumour(c, floor) for c in group]
    return round(float(np.mean([c == tumour for c in calls])), 4)
