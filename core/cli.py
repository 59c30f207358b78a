"""Command line: ``python -m core predict|evaluate|train``. JSON on stdout, progress on stderr, never a traceback.

Exit status: 0 when every file was classified, 1 when any was rejected, 2 for bad usage or an unusable model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from core.config import model_card_path
from core.errors import ModelError, ScanError, StoreError
from core.evaluation.evaluate import evaluate_folder
from core.imaging import read_file_bytes
from core.model.classifier import Classifier
from core.model.gate import REJECTED
from core.services.resources import load_classifier, open_results_store
from core.services.triage import ScanOutcome, analyse_upload, save

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one JSON line on stdout (and exits 2) instead of free text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _emit({"error": {"code": "bad_usage", "message": message}}, sys.stdout)
        self.exit(EXIT_USAGE)


def _emit(obj: dict[str, Any], stream: TextIO) -> None:
    stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
    stream.flush()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _classify_file(path: Path, classifier: Classifier, frame: int | None) -> tuple[dict[str, Any], ScanOutcome]:
    """One file -> (its JSON result or JSON error, its outcome); never raises for a bad file."""
    try:
        data = read_file_bytes(path)
    except ScanError as error:
        return {"file": str(path), **_error(error.code, str(error))}, ScanOutcome("")
    except (FileNotFoundError, IsADirectoryError):
        return {"file": str(path), **_error("not_found", "No such file.")}, ScanOutcome("")
    except OSError:
        return {"file": str(path), **_error("unreadable", "The file cannot be read (permission denied).")}, ScanOutcome(
            ""
        )
    outcome = analyse_upload(data, classifier, frame)
    if outcome.analysis is None:
        return {"file": str(path), **_error(outcome.error_code or "scan_error", outcome.error_message or "")}, outcome
    gate = outcome.analysis.prediction.gate
    if gate.decision == REJECTED:  # never a diagnosis for what is not a brain MRI
        message = "This does not look like a brain MRI slice: " + "; ".join(gate.reasons) + "."
        return {"file": str(path), "gate": gate.to_json(), **_error("not_brain_mri", message)}, outcome
    return {"file": str(path), **outcome.analysis.prediction.to_json()}, outcome


def _progress(items: Sequence[Any], description: str = "") -> Iterator[Any]:
    from tqdm import tqdm

    return iter(tqdm(items, desc=description, file=sys.stderr, disable=len(items) < 20, leave=False))


def cmd_predict(args: argparse.Namespace) -> int:
    classifier = load_classifier(args.model)
    store = None
    if args.save:  # back-fill: the database the app uses (MONGODB_URI, else BTD_DATA_DIR's SQLite file)
        try:
            store = open_results_store()
        except StoreError as error:
            _emit(_error(error.code, str(error)), sys.stdout)
            return EXIT_USAGE
    status = EXIT_OK
    for name in _progress(args.files, "predict"):
        result, outcome = _classify_file(Path(name), classifier, args.frame)
        if "error" in result:
            status = EXIT_REJECTED
        if args.save and outcome.analysis is not None:  # gate-rejected scans are recorded as such, like in the app
            saved = save(outcome.analysis, store, patient_ref=None, uploader="cli")
            result["saved"] = saved.state + (f": {saved.message}" if saved.message else "")
        _emit(result, sys.stdout)
    return status


def cmd_evaluate(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        _emit(_error("not_found", f"{root} is not a directory."), sys.stdout)
        return EXIT_USAGE
    started = time.perf_counter()
    split = Path(args.split) if args.split else None
    report = evaluate_folder(root, load_classifier(args.model), split, lambda files: _progress(files, "evaluate"))
    report["seconds"] = round(time.perf_counter() - started, 1)
    _emit(report, sys.stdout)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Brain-tumour MRI triage from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    predict = commands.add_parser("predict", help="classify scans, one JSON line per file")
    predict.add_argument("--model", help="model card JSON (default: the shipped model or $BTD_MODEL)")
    predict.add_argument("--frame", type=int, default=None, help="frame index for multi-frame DICOM files")
    predict.add_argument("--save", action="store_true", help="also save each result to the app's database")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.set_defaults(run=cmd_predict)
    evaluate = commands.add_parser("evaluate", help="score DIR/<label>/* and print JSON metrics")
    evaluate.add_argument("--model", help="model card JSON (default: the shipped model or $BTD_MODEL)")
    evaluate.add_argument("--split", help="score only the files listed in a training split file, under DIR")
    evaluate.add_argument("dir", metavar="DIR")
    evaluate.set_defaults(run=cmd_evaluate)
    fit_gate = commands.add_parser("fit-gate", help="fit the input gate's energy threshold on the validation split")
    fit_gate.add_argument("--model", help="model card JSON (default: the shipped model)")
    fit_gate.add_argument("--data", required=True, metavar="ROOT", help="the folder that holds the training folders")
    fit_gate.set_defaults(run=cmd_fit_gate)
    fit_decision = commands.add_parser(
        "fit-decision", help="fit the review band and the subtype rule on the validation split, into the card"
    )
    fit_decision.add_argument("--model", help="model card JSON (default: the shipped model)")
    fit_decision.add_argument(
        "--data", required=True, metavar="ROOT", help="the folder that holds the training folders"
    )
    fit_decision.set_defaults(run=cmd_fit_decision)
    train = commands.add_parser("train", help="train, calibrate and write a model with its card")
    train.add_argument("--data", action="append", required=True, metavar="DIR", help="DIR/<label>/* (repeatable)")
    train.add_argument("--out", default="models", metavar="DIR")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--size", type=int, default=None, help="input side in pixels")
    train.add_argument("--name", default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--version", default=None, help="model version (the weights' hash is appended)")
    train.add_argument("--unknown-weight", type=float, default=None, help="weight of tumour-of-unknown-type scans")
    train.add_argument(
        "--mirror", action=argparse.BooleanOptionalAction, default=None, help="add the left-right asymmetry channel"
    )
    train.add_argument(
        "--synthetic-lesions",
        type=float,
        default=None,
        metavar="P",
        help="share of normal scans also trained with a lesion",
    )
    train.add_argument("--rotation", type=float, default=None, metavar="DEG", help="augmentation's largest turn")
    train.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    train.add_argument("--max-minutes", type=float, default=None, help="time budget (default 75; resumes included)")
    train.add_argument("--init", metavar="CARD", help="start from this model (same input and validation split)")
    train.add_argument("--samples-per-epoch", type=int, default=None, help="images drawn per epoch (0: all)")
    train.add_argument("--transplants", type=float, default=None, metavar="P",
                       help="share of normal scans also trained with a real tumour transplanted in")  # fmt: skip
    train.add_argument("--min-tumour-pixels", type=int, default=None, help="smallest tumour mask trained as tumour")
    train.add_argument(
        "--hold-out",
        action="append",
        default=None,
        metavar="INSTITUTION",
        help="leave this institution out of training and validation; score it apart (repeatable)",
    )
    train.set_defaults(run=cmd_train)
    return parser


def cmd_fit_gate(args: argparse.Namespace) -> int:
    from core.training.gate_fit import fit_gate

    card = Path(args.model) if args.model else model_card_path()
    _emit(fit_gate(card, Path(args.data)), sys.stdout)
    return EXIT_OK


def cmd_fit_decision(args: argparse.Namespace) -> int:
    from core.training.gate_fit import fit_decision

    card = Path(args.model) if args.model else model_card_path()
    _emit(fit_decision(card, Path(args.data)), sys.stdout)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from core.training.config import TrainConfig
    from core.training.run import train

    names = (
        "epochs",
        "size",
        "name",
        "seed",
        "version",
        "unknown_weight",
        "mirror",
        "synthetic_lesions",
        "rotation",
        "learning_rate",
        "max_minutes",
        "init",
        "samples_per_epoch",
        "transplants",
        "min_tumour_pixels",
    )
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.hold_out:
        overrides["hold_out"] = tuple(args.hold_out)
    config = replace(TrainConfig(), **overrides)
    missing = [d for d in args.data if not Path(d).is_dir()]
    if missing:
        _emit(_error("not_found", f"not a directory: {', '.join(missing)}"), sys.stdout)
        return EXIT_USAGE
    if args.init and not Path(args.init).is_file():
        _emit(_error("not_found", f"no model card at {args.init}"), sys.stdout)
        return EXIT_USAGE
    command = "python -m core " + " ".join(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else ["train"])
    card = train([Path(d) for d in args.data], Path(args.out), config, command)
    _emit({"model": card["name"], "version": card["version"], "metrics": card["metrics"]}, sys.stdout)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ModelError as error:
        _emit(_error(error.code, str(error)), sys.stdout)
        return EXIT_USAGE
    except (OSError, ValueError, KeyError) as error:  # a missing split file, an unreadable folder, ...
        _emit(_error("bad_input", f"{type(error).__name__}: {error}"), sys.stdout)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
