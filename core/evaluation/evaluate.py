"""Score a model on a folder of labelled scans (``python -m core evaluate``), through the app's own pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ScanError
from core.evaluation.metrics import classification_report, machine, percentiles_ms
from core.evaluation.neighbours import with_trained_neighbour, with_trained_twin
from core.evaluation.splits import read_split
from core.imaging import read_file_bytes
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.gate import REJECTED

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}
logger = logging.getLogger("btd.evaluate")


def _labelled_files(root: Path, labels: Iterable[str]) -> list[tuple[str, Path]]:
    """``root/<label>/*`` files: a folder must be one of the model's labels or ``tumour`` (a ``no_tumor`` folder
    was scored as tumour positives); hidden folders and files (``.DS_Store``, ``__MACOSX``) are left out."""
    known = {*labels, "tumour"}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    unknown = [f.name for f in folders if f.name not in known]
    if unknown:
        raise ValueError(f"folders {unknown} are not labels of this model (expected some of {sorted(known)})")
    return [
        (folder.name, path)
        for folder in folders
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    ]


def score_file(path: Path, classifier: Classifier) -> tuple[str | None, list[float] | None, float | None]:
    """(error code, probabilities in label order, latency ms) of one file as the app would read it."""
    try:
        analysis = analyse(read_file_bytes(path), classifier)
    except ScanError as error:
        return error.code, None, None
    except OSError:
        return "unreadable", None, None
    except Exception:  # a bug on one file must not end a run of minutes: counted, and the log has the rest
        logger.exception("event=evaluation_failed code=internal_error")
        return "internal_error", None, None
    prediction = analysis.prediction
    if prediction.gate.decision == REJECTED:
        return "not_brain_mri", None, None
    return None, [prediction.probabilities[name] for name in classifier.card.labels], prediction.timings_ms["total"]


class NothingToScore(ValueError):
    """The folder or split given to :func:`evaluate_folder` holds nothing it can score as asked."""


def _split_files(split: Path, root: Path) -> list[tuple[str, Path]]:
    """A split's validation files under ``root``, each there and inside it: a missing one was scored as an
    unreadable scan, and a ``..`` entry scored a file outside the data."""
    try:
        files = read_split(split, root)
    except ValueError as error:
        raise NothingToScore(str(error)) from error
    # as written, not resolved: class folders linked to another disk are the data's own
    outside = [path for _, path in files if not path.is_relative_to(root) or ".." in path.relative_to(root).parts]
    if outside:
        raise NothingToScore(
            f"{len(outside)} of {split.name}'s files lie outside {root}; a split names files under it."
        )
    missing = [path for _, path in files if not path.is_file()]
    if missing:
        raise NothingToScore(
            f"{len(missing)} of {split.name}'s {len(files)} files are not in {root} (the first: "
            f"{missing[0].relative_to(root)}): is it the folder the split was made from?"
        )
    return files


def evaluate_folder(
    root: Path,
    classifier: Classifier,
    split: Path | None = None,
    progress: Callable[[list[Any]], Iterable[Any]] = iter,
    source: str | None = None,
    without_neighbours: bool = False,
) -> dict[str, Any]:
    """Score ``root/<label>/*`` (or the validation files a split lists under ``root``: those of one ``source``
    folder when given); folder ``tumour`` means tumour present, subtype unknown. Scans the input gate rejects are
    counted under ``rejected`` and left out of the figures; ``with_refused_tumours_missed`` gives the tumour
    sensitivity counting refused tumour scans as missed. ``without_neighbours`` leaves out the split's files with a
    trained neighbour (:mod:`core.evaluation.neighbours`: a section of the same patient seen in training) or a
    trained twin (the same slice, as stored or mirrored, elsewhere in its source)."""
    files = _labelled_files(root, classifier.card.labels) if split is None else _split_files(split, root)
    if source is not None:
        files = [(label, path) for label, path in files if path.relative_to(root).parts[0] == source]
    if not files:  # an empty folder scored "n": 0 and exit 0, as if it were a result
        where = f"{split.name}'s validation files" if split is not None else f"{root}/<label>/ for the model's labels"
        raise NothingToScore(f"Nothing to score: no image in {where}{f' from {source}' if source else ''}.")
    neighboured = with_trained_neighbour([path for _, path in files]) if without_neighbours else set()
    twinned = with_trained_twin([path for _, path in files]) if without_neighbours else set()
    left_out = neighboured | twinned
    files = [(label, path) for label, path in files if path not in left_out]
    card = classifier.card
    true: list[str] = []
    rows: list[list[float]] = []
    latencies: list[float] = []
    rejected: dict[str, int] = {}
    rejected_by_label: dict[str, int] = {}  # refused scans are not scored: say whose they were
    for label, path in progress(files):
        code, probabilities, latency = score_file(path, classifier)
        if code is not None:
            rejected[code] = rejected.get(code, 0) + 1
            rejected_by_label[label] = rejected_by_label.get(label, 0) + 1
            continue
        true.append(label)
        rows.append(probabilities)
        latencies.append(latency)
    report = classification_report(
        true, np.asarray(rows).reshape(len(rows), len(card.labels)), card.labels, card.negative_label, card.rule
    )
    refused_tumours = sum(n for label, n in rejected_by_label.items() if label != card.negative_label)
    positives = report.get("tumour_positives") or 0
    found = round((report.get("tumour_sensitivity") or 0.0) * positives)
    report.update(
        {
            # a refused tumour scan is a tumour the model did not report: the sensitivity a triage service gives
            "with_refused_tumours_missed": {
                "tumour_positives": positives + refused_tumours,
                "tumour_sensitivity": found / (positives + refused_tumours) if positives + refused_tumours else None,
            },
            "model": {"name": card.name, "version": card.version},
            "data": str(root),
            "files": len(files),
            "rejected": rejected,
            "rejected_by_label": rejected_by_label,
            **({"source": source} if source else {}),
            **(
                {"left_out_with_trained_neighbour": len(neighboured), "left_out_with_trained_twin": len(twinned)}
                if without_neighbours
                else {}
            ),
            "latency_ms": percentiles_ms(latencies),
            "machine": machine(),
        }
    )
    return report
