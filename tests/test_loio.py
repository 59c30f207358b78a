"""Leave-one-institution-out: a fold trained with an institution left out is scored on it, and ``python -m core
loio`` gathers the folds' figures into the card they estimate, refusing anything that is not one recipe's folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.training.loio import TARGET, collect


def proportion(value: float, n: int) -> dict:
    return {"value": value, "n": n, "wilson_95": [max(0.0, value - 0.1), min(1.0, value + 0.1)]}


def fold_card(institution: str, sensitivity: float = 0.95, specificity: float = 0.93, width: int = 32) -> dict:
    """A finished fold's card as ``finish_card`` writes it, reduced to what the table reads."""
    target = {
        "sensitivity": proportion(sensitivity, 200),
        "specificity": proportion(specificity, 600),
        "sensitivity_by_sequence": {s: proportion(sensitivity, 100) for s in ("flair", "t1c", "t1")},
        "glioma_named_among_found": proportion(0.99, 190),
    }
    return {
        "version": f"3.0.0+{institution.lower()}000000",
        "weights": {"sha256": institution * 32},
        "training": {
            "recipe": "core.training.standard",
            "config": {"width": width, "hold_out": [institution]},
            "draws": 416_000,
            "schedule": "branched after round 22 of 125",
            "seconds": 7000,
            "command": f"python -m core train-standard --hold-out {institution}",
        },
        "metrics": {
            "validation": {"per_source": {"LGG": {"targets": {"all": {"sensitivity": proportion(0.9, 300),
                                                                      "specificity": proportion(0.91, 800)}}}}},
            "held_out": {
                "institutions": [institution],
                "per_source": {
                    "LGG": {"tumour_calibration_error": 0.03, "targets": {"all": target, institution: target}}
                },
                "localisation": {"share": 0.2, "n": 100},
            },
        },
    }  # fmt: skip


def write(path: Path, card: dict) -> Path:
    path.write_text(json.dumps(card))
    return path


def shipped(tmp_path: Path) -> Path:
    return write(tmp_path / "model.json", {"version": "3.0.0+abc", "training": {"recipe": "core.training.standard"}})


def test_the_table_holds_each_folds_own_figures_and_says_whether_every_fold_meets_the_targets(tmp_path: Path) -> None:
    card = shipped(tmp_path)
    folds = [write(tmp_path / f"{i}.json", fold_card(i)) for i in ("FG", "CS")]
    folds.append(write(tmp_path / "DU.json", fold_card("DU", sensitivity=TARGET - 0.01)))
    section = collect(card, folds)
    assert list(section["per_institution"]) == ["CS", "DU", "FG"]
    cs = section["per_institution"]["CS"]
    assert cs["sensitivity"]["value"] == 0.95 and cs["specificity"]["n"] == 600 and cs["meets_targets"]
    assert cs["sensitivity_by_sequence"]["t1"]["n"] == 100  # plain T1 reported
    assert cs["same_run_validation_lgg"] == {"sensitivity": 0.9, "specificity": 0.91}
    assert cs["fold"]["draws"] == 416_000 and cs["fold"]["sha256"] == "CS" * 32
    assert not section["per_institution"]["DU"]["meets_targets"] and not section["every_fold_meets_targets"]
    assert section["recipe"] == {"width": 32, "schedule": "branched after round 22 of 125"}  # less the institution
    written = json.loads(card.read_text())
    assert written["metrics"]["leave_one_institution_out"] == section and written["version"] == "3.0.0+abc"
    again = collect(card, folds[:1])  # run again: the table is replaced, not added to
    assert list(json.loads(card.read_text())["metrics"]["leave_one_institution_out"]["per_institution"]) == ["FG"]
    assert again["every_fold_meets_targets"]


@pytest.mark.parametrize(
    ("fold", "refusal"),
    [
        (lambda c: c["metrics"].pop("held_out"), "no held-out figures"),
        (lambda c: c["training"]["config"].update(hold_out=["CS", "DU"]), "leaves out 2 institutions"),
        (lambda c: c["training"]["config"].update(hold_out=[]), "leaves out 0 institutions"),  # no fold: a split's
        (lambda c: c["metrics"]["held_out"].update(institutions=["DU"]), "not those of CS"),
        (lambda c: c["metrics"]["held_out"]["per_source"].pop("LGG"), "no LGG figures"),
        (lambda c: c["training"].update(recipe="core.training.run"), "another recipe"),
    ],
)
def test_a_file_that_is_no_fold_of_this_recipe_is_refused_and_the_card_left_as_it_was(tmp_path, fold, refusal) -> None:
    card = shipped(tmp_path)
    before = card.read_text()
    bad = fold_card("CS")
    fold(bad)
    with pytest.raises(ValueError, match=refusal):
        collect(card, [write(tmp_path / "CS.json", bad)])
    assert card.read_text() == before


def test_two_folds_of_one_institution_or_of_two_settings_are_refused(tmp_path: Path) -> None:
    card = shipped(tmp_path)
    with pytest.raises(ValueError, match="a second fold leaving out CS"):
        collect(card, [write(tmp_path / "a.json", fold_card("CS")), write(tmp_path / "b.json", fold_card("CS"))])
    wider, annealed = fold_card("DU", width=64), fold_card("DU")
    annealed["training"]["schedule"] = "branched after round 40 of 125"
    for other in (wider, annealed):
        with pytest.raises(ValueError, match="other settings"):
            collect(card, [write(tmp_path / "a.json", fold_card("CS")), write(tmp_path / "b.json", other)])
    with pytest.raises(ValueError, match="no fold card"):
        collect(card, [])
    (tmp_path / "list.json").write_text("[1, 2, 3]")  # an internal error: 'list' object has no attribute 'get'
    with pytest.raises(ValueError, match=r"list\.json: not a model card"):
        collect(card, [tmp_path / "list.json"])
    assert "metrics" not in json.loads(card.read_text())


def test_the_command_answers_a_bad_fold_with_a_json_error(tmp_path: Path) -> None:
    card = shipped(tmp_path)
    bad = write(tmp_path / "bad.json", {"version": "1"})
    done = subprocess.run(
        [sys.executable, "-m", "core", "loio", "--model", str(card), str(bad)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "bad_input" and "no held-out figures" in error["message"]
    assert not error["message"].startswith("ValueError")  # the sentence for the user, not Python's type before it
    done = subprocess.run(
        [sys.executable, "-m", "core", "loio", "--model", str(card), str(tmp_path / "gone.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    error = json.loads(done.stdout)["error"]  # "FileNotFoundError: [Errno 2] No such file or directory: '...'"
    assert done.returncode == 2 and error["message"] == f"No such file or directory: {tmp_path / 'gone.json'}"
    from core.cli.main import _said

    assert _said(FileExistsError("no free name for the export")) == "No free name for the export"  # ours, kept
