"""Train, calibrate and describe the classifier: ``python -m core train --data DIR [--data DIR] --out models/``.

Designed against the training collection's shortcut (every "notumor" image is an axial web slice, mostly twins):
- near-identical images (48 x 48 thumbnails correlated >= 0.97) are grouped, and whole groups fall on one side of a
  stratified train/validation split; duplicates are down-weighted so the few hundred distinct notumor slices do not
  count as 1,500;
- folder ``tumour`` (tumour present, subtype unknown: the web-style tumour scans) trains P(tumour) = 1 - P(notumor)
  through a loss on the set of allowed labels;
- inputs go through exactly the inference path (:func:`core.imaging.read_scan`, :func:`core.roi.find_brain`,
  :mod:`core.preprocess`), so crop, fixed geometry and per-image intensity normalisation remove what a source
  leaves behind; augmentation varies geometry, margins, resolution, gamma, contrast, blur, noise, JPEG quality and
  the whole intensity histogram (re-rendered with another scan's histogram);
- optionally (``--synthetic-lesions P``) a share of normal scans also trains as a counterfactual twin: the same
  augmented scan with a painted lesion, labelled tumour of unknown type, so that only the lesion tells them apart;
- a calibration temperature is fitted on the validation split, and the card records validation metrics, recall on
  held-back web-style tumour scans and two shortcut probes (tumour scans re-rendered with a notumor scan's
  histogram; normal scans with a synthetic lesion painted in).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.metrics import machine
from core.model.preprocess import crop_square, resize_square
from core.model.roi import find_brain
from core.training.calibration import fit_calibration, mean_nll, recalibrate_batchnorm, softmax
from core.training.checkpoint import Checkpoint, Progress, run_key
from core.training.config import CLASSES, NEGATIVE, TrainConfig
from core.training.data import assign_units, label_masks, load, sampling_weights, split_dataset
from core.training.finish import finish_card
from core.training.network import allowed_label_nll, batches, build_model, initial_weights
from core.training.probes import (
    inference_inputs,
    source_report,
    validation_report,
)
from core.training.sources import discover
from core.training.transplants import donors


def _log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _code_version() -> str:
    """The commit of this code (asked in the project's own folder, not the current one), with ``-dirty`` when its
    working tree has uncommitted changes; "unknown" outside a git checkout (an unpacked release)."""
    project = Path(__file__).resolve().parents[2]
    try:
        command = ["git", "-C", str(project), "describe", "--always", "--dirty", "--abbrev=7"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except OSError:
        return "unknown"


def source_balanced_nll(logits: np.ndarray, masks: np.ndarray, sources: Sequence[str], labels: Sequence[str]) -> float:
    """The validation loss that picks the kept epoch: the allowed-label NLL of each source, averaged, so a large
    source does not outvote a small one. Scans of unknown tumour type (the web-style ones) never take part: they
    are too few to choose anything on, and they are what the model is scored on."""
    chosen = np.array([label in CLASSES for label in labels])
    sources_arr = np.asarray(sources)
    return float(
        np.mean(
            [
                mean_nll(logits[chosen & (sources_arr == s)], masks[chosen & (sources_arr == s)])
                for s in sorted(set(sources_arr[chosen]))
            ]
        )
    )


def train(data_dirs: Sequence[Path], out_dir: Path, config: TrainConfig, command: str) -> dict[str, Any]:
    """Run the whole training; writes ``<name>.keras``, ``<name>.json`` (card) and ``<name>.split.json``."""
    import keras
    import tensorflow as tf

    started = time.time()
    code_version = _code_version()  # the code that runs, not whatever HEAD is when training ends
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    items = discover(data_dirs)
    if not items:
        raise ValueError(f"no PNG, JPEG or DICOM files in <class>/ folders under {', '.join(map(str, data_dirs))}")
    _log(f"{len(items)} files in {len(data_dirs)} folder(s)")
    data, rejected = load(items, _log)
    assign_units(data, config.twin_threshold)
    _log(f"decoded {len(data.images)}, rejected {rejected}; {len(set(data.units))} split units")
    train_idx, val_idx, held_idx = split_dataset(data, config)
    assert not set(data.units[train_idx]) & set(data.units[val_idx]), "a split unit straddles the split"
    labels = data.labels
    masks = label_masks(labels)
    probabilities = sampling_weights(data, train_idx, config)
    spec = config.input_spec
    val_inputs = inference_inputs([data.images[i] for i in val_idx], spec)
    val_items = [data.items[i] for i in val_idx]
    val_labels = [labels[i] for i in val_idx]
    val_sources = [item.source for item in val_items]
    references = [
        resize_square(crop_square(data.images[i], find_brain(data.images[i]).box), config.size) for i in train_idx[::7]
    ]
    lesion_donors = donors([data.items[i] for i in train_idx], [data.images[i] for i in train_idx])
    _log(f"train {len(train_idx)}, validation {len(val_idx)}, held out {len(held_idx)}; {len(lesion_donors)} donors")
    root = Path(os.path.commonpath([str(Path(d).resolve().parent) for d in data_dirs]))

    def entries(indices: np.ndarray) -> list[list[str]]:
        return [[str(data.items[i].path.resolve().relative_to(root)), labels[i]] for i in indices]

    split_entries = entries(val_idx)

    model = build_model(config)
    started_from = initial_weights(model, Path(config.init), spec, split_entries) if config.init else None
    if started_from:
        _log(f"starting from {started_from['version']}")
    stream = batches(data.images, train_idx, probabilities, masks, config, references, lesion_donors)
    steps = config.epochs * len(stream)
    warmup = min(config.warmup_epochs * len(stream), steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10, steps - warmup, alpha=0.02, warmup_target=config.learning_rate, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=allowed_label_nll)
    checkpoint = Checkpoint(out_dir / f"{config.name}.checkpoint.npz", run_key(config, split_entries))
    progress = checkpoint.restore(model) if checkpoint.path.is_file() else Progress()
    if progress.epochs_done:
        _log(f"resuming from {checkpoint.path.name} after epoch {progress.epochs_done} ({progress.seconds:.0f}s)")
        progress.resumed.append({"after_epoch": progress.epochs_done, "code_version": code_version})
    stream.epoch = progress.epochs_done  # the augmentation stream of the epoch it resumes at

    def elapsed() -> float:
        return progress.seconds + time.time() - started

    class EpochLog(keras.callbacks.Callback):
        """Prints validation figures each epoch, keeps the best weights, stops early or at the time budget, and
        saves a checkpoint that the same command resumes from after an interruption."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logits = np.asarray(self.model.predict(val_inputs, batch_size=128, verbose=0))
            val_loss = source_balanced_nll(logits, masks[val_idx], val_sources, val_labels)  # one pass an epoch
            per_source = source_report(softmax(logits), val_items)
            figures = " ".join(
                f"{source}[acc {r.get('accuracy') or 0:.3f} sens {r.get('tumour_sensitivity') or 0:.3f} "
                f"spec {r.get('tumour_specificity') or 0:.3f}]"
                for source, r in per_source.items()
            )
            _log(
                f"epoch {epoch + 1}/{config.epochs} loss {(logs or {}).get('loss', float('nan')):.4f} "
                f"val_loss {val_loss:.4f} {figures} lr {float(self.model.optimizer.learning_rate):.2e} "
                f"({elapsed():.0f}s)"
            )
            if epoch == progress.epochs_done and elapsed() * config.epochs / (epoch + 1) > config.max_minutes * 60:
                fits = max(1, int(config.max_minutes * 60 / (elapsed() / (epoch + 1))))
                _log(
                    f"at this machine's pace {config.epochs} epochs overrun the {config.max_minutes:g}-minute "
                    f"budget: training stops near epoch {fits}, before the learning rate has decayed; "
                    f"--epochs {fits} schedules a whole run that fits, --max-minutes a longer budget"
                )
            progress.epochs_done = epoch + 1
            if val_loss < progress.best_loss:
                progress.best_loss, progress.best_epoch = val_loss, epoch + 1
                progress.best_weights = self.model.get_weights()
            if progress.epochs_done - progress.best_epoch >= config.patience:
                _log(f"no better validation loss for {config.patience} epochs: stopping")
                progress.stopped = True
            if elapsed() > config.max_minutes * 60:
                _log(f"time budget of {config.max_minutes:g} minutes reached: stopping")
                progress.stopped = True
            self.model.stop_training = progress.stopped
            checkpoint.save(self.model, progress, elapsed())

    finished = False
    try:
        if progress.epochs_done < config.epochs and not progress.stopped:
            model.fit(
                stream, epochs=config.epochs, initial_epoch=progress.epochs_done, verbose=0, callbacks=[EpochLog()]
            )
        finished = True
    except KeyboardInterrupt:  # Ctrl-C: keep the best epoch so far and finish calibration and the card
        _log(f"interrupted: finishing with the best epoch so far; the same command resumes from {checkpoint.path}")
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    draw = np.random.default_rng((config.seed, 3)).choice(train_idx, size=min(3000, len(train_idx)), p=probabilities)
    recalibrate_batchnorm(model, inference_inputs([data.images[i] for i in draw], spec))
    _log(f"batch-normalisation statistics recomputed on {len(draw)} clean training inputs")
    logits = np.asarray(model.predict(val_inputs, batch_size=128, verbose=0))
    shipped_loss = source_balanced_nll(logits, masks[val_idx], val_sources, val_labels)
    _log(f"validation loss of the kept epoch {progress.best_loss:.4f}, after recomputing statistics {shipped_loss:.4f}")
    known = np.array([label in CLASSES for label in val_labels])  # never fit on the web-style scans
    temperature, negative_bias = fit_calibration(logits[known], masks[val_idx][known], CLASSES.index(NEGATIVE))
    bias = np.array([negative_bias if c == NEGATIVE else 0.0 for c in CLASSES])
    report = validation_report(logits, val_labels, temperature, val_inputs, model, spec, bias)
    headline = ("accuracy", "tumour_sensitivity", "tumour_specificity", "expected_calibration_error")
    headline += ("unknown_type_tumour_recall", "shortcut_probe_tumour_recall", "lesion_probe_tumour_recall")
    _log(f"validation {json.dumps({k: report.get(k) for k in headline})}")

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{config.name}.keras"
    model.compile(optimizer="adam", loss=None)  # keep the custom loss out of the saved file
    model.save(weights_path)
    split_file = out_dir / f"{config.name}.split.json"
    split_file.write_text(
        json.dumps(
            {
                "root": "paths are relative to the folder that holds the training folders",
                "validation": split_entries,
                "held_out": entries(held_idx),
            },
            indent=0,
        )
    )
    weights_sha256 = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    sources = sorted({item.source for item in data.items})
    card = {
        "name": config.name,
        "version": f"{config.version}+{weights_sha256[:8]}",  # every retrain is a distinct version in the records
        "labels": list(CLASSES),
        "negative_label": NEGATIVE,
        "input": asdict(spec),
        "output": "logits",
        "threshold": 0.5,
        "calibration": {"temperature": temperature, "logit_bias": {NEGATIVE: negative_bias}},
        "weights": {"file": weights_path.name, "sha256": weights_sha256},
        "parameters": int(model.count_params()),
        "metrics": {"validation": report},
        "data": {
            "folders": [str(d) for d in data_dirs],
            "files": len(items),
            "decoded": len(data.images),
            "rejected": rejected,
            "per_source": {
                source: {
                    label: {
                        "train": sum(1 for i in train_idx if data.items[i].source == source and labels[i] == label),
                        "validation": sum(1 for i in val_idx if data.items[i].source == source and labels[i] == label),
                        "held_out": sum(1 for i in held_idx if data.items[i].source == source and labels[i] == label),
                    }
                    for label in sorted({item.label for item in data.items if item.source == source})
                }
                for source in sources
            },
            "split_units": "patients (LGG), subjects (Normal-heads), near-identical-twin groups (48x48 thumbnail "
            f"correlation >= {config.twin_threshold}) elsewhere; a unit never straddles the split",
            "lesion_donors": len(lesion_donors),
            "train": len(train_idx),
            "validation": len(val_idx),
            "held_out": len(held_idx),
            "split_file": split_file.name,
        },
        "training": {
            "command": command,
            "config": asdict(config),
            "started_from": started_from,
            "epochs_run": progress.epochs_done,
            "best_epoch": progress.best_epoch,
            "best_val_loss": round(float(progress.best_loss), 5),
            "shipped_val_loss": round(shipped_loss, 5),
            "seconds": round(elapsed()),
            "resumed": progress.resumed,
            "machine": f"{machine()}, TensorFlow {tf.__version__}",
            "code_version": code_version,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    card_path = out_dir / f"{config.name}.json"
    card_path.write_text(json.dumps(card, indent=2, default=list))
    card = finish_card(card_path, root, _log)  # calibration, decision rule, per-source figures, the input gate
    if finished:
        checkpoint.path.unlink(missing_ok=True)
    _log(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB) in {elapsed():.0f}s")
    return card
