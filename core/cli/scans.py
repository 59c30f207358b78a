"""``predict`` and ``evaluate``: scans in, one JSON line per file (or one report) out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.cli.common import (
    EXIT_NOT_SAVED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    emit,
    error_json,
    not_opened,
    progress,
    unwritable,
    write_new,
)
from core.errors import ScanError, StoreError
from core.evaluation.evaluate import NothingToScore, evaluate_folder
from core.imaging import read_file_bytes
from core.imaging.geometry import undo_transform
from core.imaging.raster import encode_png
from core.model.classifier import Classifier
from core.model.gate import REJECTED
from core.services.access import COMMAND_LINE
from core.services.resources import load_classifier, open_image_store, open_results_store
from core.services.triage import NOT_SAVED, ScanOutcome, analyse_upload, save


def _classify_file(path: Path, classifier: Classifier, frame: int | None) -> tuple[dict[str, Any], ScanOutcome]:
    """One file -> (its JSON result or JSON error, its outcome); never raises for a bad file."""
    try:
        data = read_file_bytes(path)
    except ScanError as error:
        return {"file": str(path), **error_json(error.code, str(error))}, ScanOutcome("")
    except FileNotFoundError:
        return {"file": str(path), **error_json("not_found", "No such file.")}, ScanOutcome("")
    except IsADirectoryError:
        message = "This is a folder: name the files in it (a series: `python -m core study FOLDER`)."
        return {"file": str(path), **error_json("is_a_folder", message)}, ScanOutcome("")
    except OSError as error:  # permission, a name too long, a loop of links...: said as the system says it
        reason = (error.strerror or "it cannot be opened").lower()
        return {"file": str(path), **error_json("unreadable", f"The file cannot be read ({reason}).")}, ScanOutcome("")
    outcome = analyse_upload(data, classifier, frame)
    if outcome.analysis is None:
        message = outcome.error_message or ""
        if outcome.needs_frame:  # the page offers a picker; here it is an option
            message += f" Here: --frame N (0 to {outcome.frames - 1}), or python -m core study FILE for all of them."
        return {"file": str(path), **error_json(outcome.error_code or "scan_error", message)}, outcome
    gate = outcome.analysis.prediction.gate
    if gate.decision == REJECTED:  # never a diagnosis for what is not a brain MRI
        message = "Refused by the input gate: " + "; ".join(gate.reasons) + "."  # each reason says what it is
        return {"file": str(path), "gate": gate.to_json(), **error_json("not_brain_mri", message)}, outcome
    # what the Scan page shows above the verdict ("modality 'OT', not MR", "reduced"): a script reads it too, with
    # the size of the image analysed, which ``roi`` is in (a large PNG or JPEG is reduced: a box drawn on the file
    # itself was in the wrong place)
    height, width = outcome.analysis.scan.pixels.shape[:2]
    result = {
        "file": str(path),
        **outcome.analysis.prediction.to_json(),
        "image": {"width": int(width), "height": int(height)},
        "warnings": list(outcome.analysis.scan.warnings),
    }
    lesion = outcome.analysis.lesion
    if lesion is not None:
        result |= {"lesion_px": lesion.area_px, "lesion_mm2": lesion.area_mm2}
    return result, outcome


def _write_mask(folder: Path, source: Path, outcome: ScanOutcome) -> str | None:
    """The lesion mask of an analysed slice as ``<input file name>.lesion.png`` (``.frameN.lesion.png`` for frame N
    of a multi-frame file; 255 = lesion), in the file's own
    pixel order (a DICOM slice shown turned to the radiological view is turned back: laid on the file's pixel array,
    a mask in the displayed order put the lesion in the other hemisphere); a name already taken (the same file name
    in two folders, an earlier run's mask) gets ``-2``, ``-3``... so that no mask overwrites another file
    (:func:`write_new`)."""
    analysis = outcome.analysis
    if analysis is None or analysis.lesion is None or analysis.prediction.gate.decision == REJECTED:
        return None
    stored = undo_transform(analysis.lesion.mask, analysis.scan.display)
    encoded = encode_png(stored.astype(np.uint8) * 255)
    frame = analysis.scan.frame  # one frame of a multi-frame file: named after it (frames 0 and 1 came out as
    stem = source.name if frame is None else f"{source.name}.frame{frame}"  # "f.dcm" and "f.dcm-2")
    return str(write_new(folder, stem, ".lesion.png", encoded))


def cmd_predict(args: argparse.Namespace) -> int:
    classifier = load_classifier(args.model)
    masks = Path(args.lesion_masks) if args.lesion_masks else None
    if masks is not None:
        if classifier.segmenter is None:
            emit(error_json("no_lesion_model", "No lesion segmenter is installed (btd-lesion.json)."), sys.stdout)
            return EXIT_USAGE
        if (refused := unwritable(masks, "mask folder")) is not None:
            emit(refused, sys.stdout)
            return EXIT_USAGE
    store, images = None, None
    if args.save:  # back-fill: the database the app uses (MONGODB_URI, else BTD_DATA_DIR's SQLite file)
        try:
            store = open_results_store(existing=True)  # a mistyped folder is no new database
            images = open_image_store(store)
        except (StoreError, ValueError) as error:  # ValueError: the audit key cannot be made (as `study` says)
            return not_opened(error)
    status, unsaved = EXIT_OK, False
    for name in progress(args.files, "predict"):
        result, outcome = _classify_file(Path(name), classifier, args.frame)
        if "error" in result:
            status = EXIT_REJECTED
        elif masks is not None:
            try:  # a full disk midway: said on the file's line, never the end of the batch
                result["lesion_mask"] = _write_mask(masks, Path(name), outcome)
            except OSError as error:
                result["lesion_mask_error"] = f"not written ({(error.strerror or 'error').lower()})"
        if args.save and outcome.analysis is not None:  # gate-rejected scans are recorded as such, like in the app
            saved = save(outcome.analysis, store, actor=COMMAND_LINE, patient_ref=None, images=images)
            result["saved"] = saved.state + (f": {saved.message}" if saved.message else "")
            unsaved = unsaved or saved.state == NOT_SAVED
        emit(result, sys.stdout)
    return EXIT_NOT_SAVED if unsaved else status


def cmd_evaluate(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        emit(error_json("not_found", f"{root} is not a directory."), sys.stdout)
        return EXIT_USAGE
    started = time.perf_counter()
    split = Path(args.split) if args.split else None
    if split is None and (args.source or args.without_neighbours):
        emit(error_json("bad_usage", "--source and --without-neighbours choose among a --split's files"), sys.stdout)
        return EXIT_USAGE
    try:
        report = evaluate_folder(
            root,
            load_classifier(args.model, lesions=False),
            split,
            lambda files: progress(files, "evaluate"),
            args.source,
            args.without_neighbours,
        )
    except NothingToScore as error:  # an empty folder, or a split that does not fit it
        emit(error_json("bad_input", str(error)), sys.stdout)
        return EXIT_USAGE
    report["seconds"] = round(time.perf_counter() - started, 1)
    emit(report, sys.stdout)
    return EXIT_OK
