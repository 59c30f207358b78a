"""``train``, ``calibrate``, ``fit-gate``, ``fit-decision``, ``fit-series`` and ``loio``: making, calibrating and
measuring a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.common import EXIT_OK, EXIT_USAGE, emit, error_json
from core.config import model_card_path


def card_version(card: Path) -> str:
    """The version a refit wrote into ``card`` with its new rules (one write: ``core.training.card_io``)."""
    import json

    return str(json.loads(card.read_text())["version"])


def chosen_card(args: argparse.Namespace) -> Path:
    """The card a refit works on: ``--model``, else the one served (``BTD_MODEL``, or the shipped card)."""
    return Path(args.model) if args.model else model_card_path()


def cmd_fit_gate(args: argparse.Namespace) -> int:
    from core.training.gate_fit import fit_gate

    card = chosen_card(args)
    fitted = fit_gate(card, Path(args.data), restamp=True)
    emit({**fitted, "version": card_version(card)}, sys.stdout)
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from core.training.finish import finish_card, recalibrate_saved_batchnorm

    card = chosen_card(args)
    if args.batchnorm:
        print(f"batch normalisation: {recalibrate_saved_batchnorm(card, Path(args.data))}", file=sys.stderr)
    done = finish_card(card, Path(args.data), log=lambda message: print(message, file=sys.stderr), restamp=True)
    emit(
        {
            "model": done["name"],
            "version": done["version"],
            "calibration": done["calibration"],
            "decision": done["decision"],
        },
        sys.stdout,
    )
    return EXIT_OK


def cmd_fit_series(args: argparse.Namespace) -> int:
    from core.training.series_fit import fit_series

    card = chosen_card(args)
    fitted = fit_series(card, Path(args.data), log=lambda message: print(message, file=sys.stderr), restamp=True)
    emit({**fitted, "version": card_version(card)}, sys.stdout)
    return EXIT_OK


def cmd_loio(args: argparse.Namespace) -> int:
    from core.training.loio import collect

    card = chosen_card(args)
    section = collect(card, [Path(f) for f in args.folds])
    emit({"model": str(card), "leave_one_institution_out": section}, sys.stdout)
    return EXIT_OK


def cmd_ensemble(args: argparse.Namespace) -> int:
    from core.training.ensemble import write_ensemble

    if len(args.member) < 2:
        raise ValueError("an ensemble takes two or more --member cards")
    card = write_ensemble(
        [Path(m) for m in args.member],
        Path(args.out),
        "python -m core " + " ".join(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else ["ensemble"]),
        Path(args.data) if args.data else None,
        log=lambda message: print(message, file=sys.stderr),
    )
    emit({"model": card["name"], "version": card["version"], "members": card["members"]}, sys.stdout)
    return EXIT_OK


def cmd_fit_decision(args: argparse.Namespace) -> int:
    from core.training.gate_fit import fit_decision

    card = chosen_card(args)
    fitted = fit_decision(card, Path(args.data), restamp=True)
    emit({**fitted, "version": card_version(card)}, sys.stdout)
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
        emit(error_json("not_found", f"not a directory: {', '.join(missing)}"), sys.stdout)
        return EXIT_USAGE
    if args.init and not Path(args.init).is_file():
        emit(error_json("not_found", f"no model card at {args.init}"), sys.stdout)
        return EXIT_USAGE
    command = "python -m core " + " ".join(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else ["train"])
    card = train([Path(d) for d in args.data], Path(args.out), config, command)
    emit({"model": card["name"], "version": card["version"], "metrics": card["metrics"]}, sys.stdout)
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    from core.training.cache import CropCache, build_cache

    given = Path(args.data or args.source)  # --data is a folder already (checked as the options are read)
    if args.source and not given.is_file():
        emit(error_json("not_found", f"not a file: {given}"), sys.stdout)
        return EXIT_USAGE
    if args.source and Path(args.out).resolve() == given.resolve():
        emit(error_json("bad_usage", f"--out is the cache being read ({given}): name another file"), sys.stdout)
        return EXIT_USAGE
    if args.jpeg is not None and not 1 <= args.jpeg <= 100:
        emit(error_json("bad_usage", f"--jpeg takes a quality from 1 to 100, not {args.jpeg}"), sys.stdout)
        return EXIT_USAGE
    if args.data:
        cache = build_cache(given, args.size, args.workers, log=lambda message: print(message, file=sys.stderr))
    else:
        cache = CropCache.load(given)
    cache.save(Path(args.out), jpeg_quality=args.jpeg)
    emit(
        {
            "out": args.out,
            "crops": len(cache),
            "size": int(cache.crops.shape[1]) if len(cache) else args.size,
            "rejected": cache.rejected,
            "packed": None if args.jpeg is None else f"JPEG quality {args.jpeg}",
            "bytes": Path(args.out).stat().st_size,
        },
        sys.stdout,
    )
    return EXIT_OK


def cmd_train_standard(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from core.training.standard_run import Branch, StandardConfig, train_standard

    names = ("width", "draws", "batch_size", "round_steps", "learning_rate", "seed", "name", "version")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.hold_out:
        overrides["hold_out"] = tuple(args.hold_out)
    config = replace(StandardConfig(), **overrides, twin_threshold=args.twin_threshold)
    for path in (args.cache, args.split):
        if not Path(path).is_file():
            emit(error_json("not_found", f"no such file: {path}"), sys.stdout)
            return EXIT_USAGE
    if (args.anneal is None) != (args.branch is None) or (args.anneal is not None and args.anneal < 1):
        emit(error_json("bad_usage", "--anneal ROUNDS (at least 1) and --branch DIR go together"), sys.stdout)
        return EXIT_USAGE
    anneal = None if args.anneal is None else Branch(Path(args.branch), args.anneal)
    command = "python -m core " + " ".join(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else ["train-standard"])
    result = train_standard(
        Path(args.cache),
        Path(args.split),
        Path(args.out),
        config,
        command,
        max_minutes=args.max_minutes if args.max_minutes is not None else float("inf"),
        data_root=Path(args.data) if args.data else None,
        validate_every=args.validate_every,
        deterministic=not args.fast,
        anneal=anneal,
    )
    if result.get("status") == "paused":
        emit(result, sys.stdout)
    else:
        emit({"model": result["name"], "version": result["version"], "metrics": result["metrics"]}, sys.stdout)
    return EXIT_OK


def cmd_train_lesion(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from core.training.segment import SegmentConfig
    from core.training.segment_run import INSTITUTIONS, train_lesion

    names = ("draws", "width", "batch", "backbone", "fold_backbones", "tune")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if not Path(args.cache).is_file():  # --data is a folder already (checked as the options are read)
        emit(error_json("not_found", f"not found: {args.cache}"), sys.stdout)
        return EXIT_USAGE
    command = "python -m core " + " ".join(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else ["train-lesion"])
    config = replace(SegmentConfig(), **overrides)
    root = Path(args.data) if args.data else None
    folds = INSTITUTIONS if args.folds else tuple(dict.fromkeys(args.fold or ()))
    card = train_lesion(Path(args.cache), root, Path(args.out), config, folds, command)
    emit({"model": card["name"], "version": card["version"], "figures": card["figures"]}, sys.stdout)
    return EXIT_OK
