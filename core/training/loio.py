"""Leave-one-institution-out (LOIO): the fold models' held-out figures gathered into the card they estimate.

A fold is a model trained with one LGG institution left out of training, validation and every fitted rule
(``train-standard --hold-out INST``, finished with ``--data``), so its card's ``metrics.held_out`` scores a hospital
it never saw. :func:`collect` writes one row per institution under the card's
``metrics.leave_one_institution_out``, each with the fold's schedule and weights, so the card says how the estimate
was made and of which networks. Nothing is computed again: the figures are the fold cards' own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.training.card_io import write_card

TARGET = 0.92  # issue 22: clear tumours found and tumour-free sections cleared, on each left-out institution
TARGETS_TEXT = (
    "LGG sections of the left-out institution: clear tumours (>= 300 mask pixels, FLAIR and T1c) found and "
    f"tumour-free sections (>= 15,000 head pixels) called no tumour, each >= {TARGET}; plain T1 reported"
)


def left_out(card: dict[str, Any]) -> list[str]:
    """The institutions a model's training left out entirely (``--hold-out``), as its card records them."""
    return list(card.get("training", {}).get("config", {}).get("hold_out") or [])


def fold_row(card: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """The left-out institution of one fold card and its row; ``ValueError`` naming ``name`` when it is no fold."""
    held = card.get("metrics", {}).get("held_out")
    if not held:
        raise ValueError(f"{name}: no held-out figures (train with --hold-out INST, finish the card with --data)")
    institutions = left_out(card)
    if len(institutions) != 1:
        raise ValueError(f"{name}: leaves out {len(institutions)} institutions; a fold leaves out exactly one")
    institution = institutions[0]
    if held.get("institutions") != [institution]:
        raise ValueError(f"{name}: its held-out figures are not those of {institution}, the institution it left out")
    lgg = held.get("per_source", {}).get("LGG", {})
    target = lgg.get("targets", {}).get(institution)
    if target is None:
        raise ValueError(f"{name}: no LGG figures for its left-out institution {institution}")
    seen = card.get("metrics", {}).get("validation", {}).get("per_source", {}).get("LGG", {}).get("targets", {})
    training = card.get("training", {})
    sensitivity, specificity = target["sensitivity"]["value"], target["specificity"]["value"]
    return institution, {
        "sensitivity": target["sensitivity"],
        "specificity": target["specificity"],
        "sensitivity_by_sequence": target["sensitivity_by_sequence"],
        "glioma_named_among_found": target.get("glioma_named_among_found"),
        "tumour_calibration_error": lgg.get("tumour_calibration_error"),
        "localisation": held.get("localisation"),
        "same_run_validation_lgg": {
            key: seen.get("all", {}).get(key, {}).get("value") for key in ("sensitivity", "specificity")
        },
        "meets_targets": sensitivity is not None
        and specificity is not None
        and sensitivity >= TARGET
        and specificity >= TARGET,
        "fold": {
            "version": card.get("version"),
            "sha256": card.get("weights", {}).get("sha256"),
            "draws": training.get("draws"),
            "schedule": training.get("schedule"),
            "seconds": training.get("seconds"),
            "command": training.get("command"),
        },
    }


def _recipe(card: dict[str, Any]) -> dict[str, Any]:
    """What a fold must share with the others: the training settings, less the institution it leaves out, and the
    schedule it ran (an annealed branch's differs from a whole run's)."""
    config = dict(card.get("training", {}).get("config", {}))
    config.pop("hold_out", None)
    return {**config, "schedule": card.get("training", {}).get("schedule")}


def _card(path: Path) -> dict[str, Any]:
    """A card's JSON object; ValueError naming the file when it holds another JSON value (a list was an internal
    error: ``'list' object has no attribute 'get'``)."""
    read = json.loads(path.read_text())
    if not isinstance(read, dict):
        raise ValueError(f"{path}: not a model card (a JSON object)")
    return read


def collect(card_path: Path, fold_paths: list[Path]) -> dict[str, Any]:
    """Write the folds' rows into the card at ``card_path`` (replacing an earlier table) and return the section.
    Refused, the card untouched: a file that is no fold, two folds of one institution, a fold of another recipe
    than the card's (``training.recipe``) or of other settings than the first fold's."""
    if not fold_paths:
        raise ValueError("no fold card given")
    card = _card(card_path)
    rows: dict[str, dict[str, Any]] = {}
    recipe: dict[str, Any] | None = None
    for path in fold_paths:
        fold = _card(Path(path))
        institution, row = fold_row(fold, str(path))
        if fold.get("training", {}).get("recipe") != card.get("training", {}).get("recipe"):
            raise ValueError(f"{path}: trained by another recipe than the card's; it estimates another model")
        if institution in rows:
            raise ValueError(f"{path}: a second fold leaving out {institution}")
        if recipe is not None and _recipe(fold) != recipe:
            raise ValueError(f"{path}: trained with other settings than the first fold; a table mixes one recipe")
        recipe = _recipe(fold)
        rows[institution] = row
    section = {
        "targets": TARGETS_TEXT,
        "recipe": recipe,
        "per_institution": dict(sorted(rows.items())),
        "every_fold_meets_targets": all(row["meets_targets"] for row in rows.values()),
    }
    card.setdefault("metrics", {})["leave_one_institution_out"] = section
    write_card(card_path, card)
    return section
