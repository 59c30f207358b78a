"""Command line: ``python -m core predict|study|evaluate|train|calibrate|fit-*|users|audit|images``.

JSON on stdout, progress on stderr, never a traceback. Exit status: 0 when every file was classified (or the
command did what it was asked), 1 when any file was rejected (or the audit chain is broken), 2 for bad usage or an
unusable model or database, 3 when a result asked to be saved (``--save``) could not be.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from core.cli import admin, model, pacs, scans, studies
from core.cli.common import (
    EXIT_USAGE,
    OutputClosed,
    Parser,
    degrees,
    emit,
    error_json,
    folder,
    positive,
    positive_int,
    share,
    weight,
    whole,
)
from core.errors import AccessDenied, ConfigError, ModelError, PacsError, StoreError
from core.evaluation.neighbours import TWIN_THRESHOLD


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m core", description="Brain-tumour MRI triage from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_scan_commands(commands)
    _add_fitting_commands(commands)
    _add_train_command(commands)
    _add_standard_training_commands(commands)
    _add_lesion_commands(commands)
    admin.add_commands(commands)
    pacs.add_commands(commands)
    return parser


def _add_scan_commands(commands: Any) -> None:
    """predict, study, evaluate: classify scans, whole series, or a labelled folder."""
    predict = commands.add_parser("predict", help="classify scans, one JSON line per file")
    predict.add_argument("--model", help="model card JSON (default: the shipped model or $BTD_MODEL)")
    predict.add_argument(
        "--frame",
        type=int,
        default=None,
        help="the frame to analyse in every FILE (0 in a single-frame file: give multi-frame files a run of their own)",
    )
    predict.add_argument("--save", action="store_true", help="also save each result to the app's database")
    predict.add_argument(
        "--lesion-masks", metavar="DIR", help="write each analysed slice's lesion mask as DIR/<file name>.lesion.png"
    )
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.set_defaults(run=scans.cmd_predict)
    study = commands.add_parser("study", help="classify whole series, one JSON line per series")
    study.add_argument("--model", help="model card JSON (default: the shipped model or $BTD_MODEL)")
    study.add_argument(
        "paths", nargs="+", metavar="PATH", help="a folder of DICOM files, a zip, a multi-frame DICOM or a NIfTI file"
    )
    study.add_argument("--save", action="store_true", help="also save each series to the app's database")
    study.add_argument(
        "--display-out",
        metavar="DIR",
        help="write each series' middle section as the viewer shows it (PNG) and its edge letters into the JSON line",
    )
    study.set_defaults(run=studies.cmd_study)
    evaluate = commands.add_parser("evaluate", help="score DIR/<label>/* and print JSON metrics")
    evaluate.add_argument("--model", help="model card JSON (default: the shipped model or $BTD_MODEL)")
    evaluate.add_argument("--split", help="score only the files listed in a training split file, under DIR")
    evaluate.add_argument("--source", metavar="FOLDER", help="with --split: only its files under DIR/FOLDER")
    evaluate.add_argument(
        "--without-neighbours",
        action="store_true",
        help="with --split: leave out files with a trained numbered neighbour (the same patient's next section) "
        "or a trained twin (the same slice, as stored or mirrored)",
    )
    evaluate.add_argument("dir", metavar="DIR")
    evaluate.set_defaults(run=scans.cmd_evaluate)


def _add_fitting_commands(commands: Any) -> None:
    """fit-gate, fit-decision, calibrate, fit-series: refit parts of a trained model's card on its validation data;
    loio: gather its leave-one-institution-out folds' figures into it; ensemble: trained models as one."""
    fit_gate = commands.add_parser("fit-gate", help="fit the input gate's energy threshold on the validation split")
    fit_gate.add_argument(
        "--model", help="model card JSON to refit (default: the served one, $BTD_MODEL or the shipped model)"
    )
    fit_gate.add_argument(
        "--data", required=True, type=folder, metavar="ROOT", help="the folder that holds the training folders"
    )
    fit_gate.set_defaults(run=model.cmd_fit_gate)
    fit_decision = commands.add_parser(
        "fit-decision", help="fit the review band and the subtype rule on the validation split, into the card"
    )
    fit_decision.add_argument(
        "--model", help="model card JSON to refit (default: the served one, $BTD_MODEL or the shipped model)"
    )
    fit_decision.add_argument(
        "--data", required=True, type=folder, metavar="ROOT", help="the folder that holds the training folders"
    )
    fit_decision.set_defaults(run=model.cmd_fit_decision)
    calibrate = commands.add_parser(
        "calibrate", help="refit calibration, decision rule, per-source figures and the gate of a trained model"
    )
    calibrate.add_argument(
        "--model", help="model card JSON to refit (default: the served one, $BTD_MODEL or the shipped model)"
    )
    calibrate.add_argument(
        "--data", required=True, type=folder, metavar="ROOT", help="the folder that holds the training folders"
    )
    calibrate.add_argument(
        "--batchnorm", action="store_true", help="first recompute batch-normalisation statistics on training scans"
    )
    calibrate.set_defaults(run=model.cmd_calibrate)
    series = commands.add_parser("fit-series", help="fit the series rule on validation volumes (LGG, Normal-heads)")
    series.add_argument(
        "--model", help="model card JSON to refit (default: the served one, $BTD_MODEL or the shipped model)"
    )
    series.add_argument(
        "--data", required=True, type=folder, metavar="ROOT", help="the folder that holds LGG and Normal-heads"
    )
    series.set_defaults(run=model.cmd_fit_series)
    loio = commands.add_parser(
        "loio", help="write the leave-one-institution-out table of fold models (--hold-out INST) into a card"
    )
    loio.add_argument("--model", help="model card JSON the folds estimate (default: $BTD_MODEL or the shipped model)")
    loio.add_argument("folds", nargs="+", metavar="FOLD_CARD", help="one finished fold card per left-out institution")
    loio.set_defaults(run=model.cmd_loio)
    ensemble = commands.add_parser(
        "ensemble", help="one network and card from trained models: the mean of their calibrated log-probabilities"
    )
    ensemble.add_argument(
        "--member", action="append", required=True, metavar="CARD", help="a member's card (model 3's first)"
    )
    ensemble.add_argument("--out", required=True, metavar="DIR")
    ensemble.add_argument(
        "--data", type=folder, metavar="ROOT", help="the training folders: finish the card (calibration, rules)"
    )
    ensemble.set_defaults(run=model.cmd_ensemble)


def _add_train_command(commands: Any) -> None:
    """train: the small CNN from the image folders, calibrated, with its card (:func:`core.training.run.train`)."""
    train = commands.add_parser("train", help="train, calibrate and write a model with its card")
    train.add_argument("--data", action="append", required=True, metavar="DIR", help="DIR/<label>/* (repeatable)")
    train.add_argument("--out", default="models", metavar="DIR")
    train.add_argument("--epochs", type=whole(1, 10_000), default=None)
    train.add_argument("--size", type=whole(32, 1024), default=None, help="input side in pixels")
    train.add_argument("--name", default=None)
    train.add_argument("--seed", type=whole(0, 2**32 - 1), default=None)
    train.add_argument("--version", default=None, help="model version (the weights' hash is appended)")
    train.add_argument("--unknown-weight", type=weight, default=None, help="weight of tumour-of-unknown-type scans")
    train.add_argument(
        "--mirror", action=argparse.BooleanOptionalAction, default=None, help="add the left-right asymmetry channel"
    )
    train.add_argument(
        "--synthetic-lesions",
        type=share,
        default=None,
        metavar="P",
        help="share of normal scans also trained with a lesion",
    )
    train.add_argument("--rotation", type=degrees, default=None, metavar="DEG", help="augmentation's largest turn")
    train.add_argument("--learning-rate", type=positive, default=None, help="peak learning rate")
    train.add_argument("--max-minutes", type=positive, default=None, help="time budget (default 180; resumes included)")
    train.add_argument("--init", metavar="CARD", help="start from this model (same input and validation split)")
    train.add_argument(
        "--samples-per-epoch", type=whole(0, 10**9), default=None, help="images drawn per epoch (0: all)"
    )
    train.add_argument(
        "--transplants",
        type=share,
        default=None,
        metavar="P",
        help="share of normal scans also trained with a real tumour transplanted in",
    )
    train.add_argument(
        "--min-tumour-pixels", type=whole(0, 10**6), default=None, help="smallest tumour mask trained as tumour"
    )
    train.add_argument(
        "--hold-out",
        action="append",
        default=None,
        metavar="INSTITUTION",
        help="leave this institution out of training and validation; score it apart (repeatable)",
    )
    train.set_defaults(run=model.cmd_train)


def _add_standard_training_commands(commands: Any) -> None:
    """cache, train-standard: model 3 from the crop cache (:mod:`core.training.standard_run`)."""
    cache = commands.add_parser("cache", help="decode and crop the training folders once, for train-standard")
    source = cache.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=folder, metavar="ROOT", help="the folder that holds the training folders")
    source.add_argument("--from", dest="source", metavar="FILE", help="an existing cache to write again (--jpeg)")
    cache.add_argument("--out", default="data/cache/brain-mri-128.npz", metavar="FILE")
    cache.add_argument("--size", type=whole(32, 1024), default=128, help="crop side in pixels")
    cache.add_argument("--workers", type=whole(1, 64), default=2, help="processes that decode in parallel")
    cache.add_argument(
        "--jpeg", type=int, metavar="QUALITY", help="pack the crops as JPEG (85: 44 MB, small enough to send)"
    )
    cache.set_defaults(run=model.cmd_cache)
    standard = commands.add_parser(
        "train-standard", help="train model 3 (ResNet, standard recipe) from the crop cache; resumable"
    )
    standard.add_argument("--cache", default="data/cache/brain-mri-128.npz", metavar="FILE")
    standard.add_argument(
        "--split",
        default="models/btd-cnn.split.json",
        metavar="FILE",
        help="the validation split to keep (a card's split file)",
    )
    standard.add_argument("--out", default="data/runs", metavar="DIR")
    standard.add_argument(
        "--data", type=folder, metavar="ROOT", help="the training folders: finish the card on the raw files"
    )
    standard.add_argument(
        "--width", type=whole(1, 1024), default=None, help="ResNet base width (64: the published ResNet-18)"
    )
    standard.add_argument(
        "--draws", type=whole(1, 10**10), default=None, help="training images drawn in the whole schedule"
    )
    standard.add_argument("--batch-size", type=whole(1, 65_536), default=None)
    standard.add_argument(
        "--round-steps", type=whole(1, 10**9), default=None, help="optimiser steps between checkpoints"
    )
    standard.add_argument("--learning-rate", type=positive, default=None, help="peak learning rate")
    standard.add_argument("--seed", type=whole(0, 2**32 - 1), default=None)
    standard.add_argument("--name", default=None)
    standard.add_argument("--version", default=None, help="model version (the weights' hash is appended)")
    standard.add_argument("--max-minutes", type=positive, default=None, help="end this sitting after this long")
    standard.add_argument(
        "--twin-threshold",
        type=lambda text: None if text == "none" else share(text),
        default=TWIN_THRESHOLD,
        help="leave out training crops correlated this closely with a validation crop, as stored or mirrored "
        "('none': keep them, as the shipped runs did)",
    )
    standard.add_argument(
        "--validate-every",
        type=positive_int,
        default=4,
        metavar="ROUNDS",
        help="score the validation split every this many rounds (the learning curve)",
    )
    standard.add_argument(
        "--anneal",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="a finished model from the run in --out so far: its learning rate falls to zero over ROUNDS more "
        "rounds, in --branch (the run itself is not changed)",
    )
    standard.add_argument("--branch", metavar="DIR", help="where the annealed branch goes (with --anneal)")
    standard.add_argument(
        "--hold-out",
        action="append",
        default=None,
        metavar="INSTITUTION",
        help="leave this LGG institution out of training; score it apart (repeatable)",
    )
    standard.add_argument(
        "--fast",
        action="store_true",
        help="no deterministic kernels (for a GPU; no faster on a CPU): a resume is exact, not bit for bit",
    )
    standard.set_defaults(run=model.cmd_train_standard)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; whatever happens, one JSON line or a quiet exit, never a traceback: its own report that
    cannot be written either (standard output closed, on a full disk) ends it quietly too."""
    if sys.stdout is None:  # started with standard output closed (`>&-`): nothing it did could be reported
        with contextlib.suppress(Exception):
            sys.stderr.write("Standard output is closed: nothing was run (each result is a line on it).\n")
        return EXIT_USAGE
    try:
        return _run(argv)
    except OutputClosed:  # the reader stopped (`| head`), a usage error's line included: nothing more can be said
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:  # the error's own line could not be written (standard output on a full disk): said
        _silence_stdout()  # on standard error, where it can be (an export to a full disk exited 2 in silence)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"The command's output could not be written ({error.strerror or type(error).__name__}).\n")
        return EXIT_USAGE


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except OutputClosed:
        raise
    except BrokenPipeError as error:  # another pipe (a worker's): a failure like any other
        return _internal_error(error)
    except (ModelError, StoreError, AccessDenied, PacsError, ConfigError) as error:  # InvalidRecord is a StoreError
        emit(error_json(error.code, str(error)), sys.stdout)
        return EXIT_USAGE
    except (OSError, ValueError, KeyError) as error:  # a missing split file, an unreadable folder, ...
        emit(error_json("bad_input", _said(error)), sys.stdout)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        return _internal_error(error)


def _said(error: OSError | ValueError | KeyError) -> str:
    """A bad input's message: ours as written (a ValueError's text is the sentence for the user, without Python's
    "ValueError: " before it), a system error's reason and the file it names ("[Errno 2] No such file or
    directory: 'x'" read as Python's), a missing key named as one."""
    if isinstance(error, OSError):  # a system error's reason, or the sentence one of ours was raised with
        why = error.strerror or str(error) or type(error).__name__
        why = why[:1].upper() + why[1:]
        return f"{why}: {error.filename}" if error.filename else why
    if isinstance(error, KeyError):
        return f"A value it needs is missing ({error})."
    return str(error) or type(error).__name__


def _internal_error(error: Exception) -> int:
    """Anything unexpected is still one JSON line, never a traceback; its text is not echoed (it may quote an
    address, a path or a value), its type is, and the log has the rest."""
    logging.getLogger("btd.cli").exception("event=cli_failed")
    emit(error_json("internal_error", f"The command failed ({type(error).__name__}); see the log."), sys.stdout)
    return EXIT_USAGE


EXIT_BROKEN_PIPE = 141  # as a shell reports a command ended by SIGPIPE


def _silence_stdout() -> None:
    """Standard output to /dev/null, so that the interpreter's last flush does not fail again on the closed pipe
    (the Python documentation's recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): replace the stream itself
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    finally:
        os.close(devnull)


def _add_lesion_commands(commands: Any) -> None:
    """train-lesion: the lesion segmenter from the crop cache (:mod:`core.training.segment_run`)."""
    lesion = commands.add_parser(
        "train-lesion", help="train the lesion segmenter on the LGG masks; --folds scores each institution left out"
    )
    lesion.add_argument("--cache", default="data/cache/brain-mri-128.npz", metavar="FILE")
    lesion.add_argument(
        "--data",
        type=folder,
        metavar="ROOT",
        help="the training folders, for scoring each fold (without: train the folds only)",
    )
    lesion.add_argument("--out", default="models", metavar="DIR")
    folds = lesion.add_mutually_exclusive_group()
    folds.add_argument("--folds", action="store_true", help="leave each LGG institution out in turn (3 more runs)")
    folds.add_argument(
        "--fold",
        action="append",
        metavar="INSTITUTION",
        help="leave this LGG institution out (repeatable; a later call adds others to the same card)",
    )
    lesion.add_argument("--draws", type=whole(1, 10**10), default=None, help="training images drawn per network")
    lesion.add_argument(
        "--width", type=whole(1, 1024), default=None, help="U-Net base width (a decoder: 4 x this many channels)"
    )
    lesion.add_argument("--batch", type=whole(1, 65_536), default=None, help="sections a step (16)")
    lesion.add_argument(
        "--backbone",
        metavar="CARD",
        help="a model-3 card: a decoder on its network (frozen but for --tune), not a U-Net",
    )
    lesion.add_argument(
        "--fold-backbones",
        metavar="PATTERN",
        help="with --folds and --backbone: each fold's backbone card, {fold} for the institution it left out",
    )
    lesion.add_argument(
        "--tune",
        type=int,
        default=None,
        metavar="N",
        help="with --backbone: the backbone's N coarsest resolutions learn too (0: frozen; 1: its last stage)",
    )
    lesion.set_defaults(run=model.cmd_train_lesion)
