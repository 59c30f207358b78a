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
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.metrics import machine
from core.model.preprocess import InputSpec, crop_square, resize_square
from core.model.roi import find_brain
from core.training.calibration import (
    fit_calibration,
    mean_nll,
    negative_bias_vector,
    recalibrate_batchnorm,
    softmax,
)
from core.training.card_io import write_card
from core.training.checkpoint import Checkpoint, Progress, code_version, run_key
from core.training.config import CLASSES, NEGATIVE, TrainConfig
from core.training.data import Dataset, assign_units, label_masks, load, sampling_weights, split_dataset
from core.training.finish import finish_card
from core.training.network import allowed_label_nll, batches, build_model, initial_weights
from core.training.probes import (
    inference_inputs,
    source_report,
    validation_report,
)
from core.training.sources import Item, discover
from core.training.transplants import Donor, donors


def _log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
    """Run the whole training; writes ``<name>.keras``, ``<name>.json`` (card) and ``<name>.split.json``.

    Stages: the data (:func:`load_training_data`), the validation set, the augmentation's sources, the trainer
    (:func:`build_trainer`), the epochs (:func:`end_epoch` after each, resumable from the checkpoint), the kept
    epoch, its calibration, and the files."""
    import keras
    import tensorflow as tf

    started = time.time()
    version = code_version()  # the code that runs, not whatever HEAD is when training ends
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    data = load_training_data(data_dirs, config)
    validation = ValidationSet.of(data, config.input_spec)
    references, lesion_donors = _augmentation_sources(data, config)
    split_entries = data.entries(data.val_idx)
    model, started_from, stream = build_trainer(config, data, split_entries, references, lesion_donors)
    checkpoint = Checkpoint(out_dir / f"{config.name}.checkpoint.npz", run_key(config, split_entries))
    progress = _resume(checkpoint, model, version)
    stream.epoch = progress.epochs_done  # the augmentation stream of the epoch it resumes at
    sitting = Sitting(config, progress, checkpoint, validation, started)
    finished = _fit(model, stream, sitting)
    _restore_kept_epoch(model, progress, data, config)
    calibration = _calibrate(model, validation, progress, config.input_spec)

    weights_path, split_file = _save_model(model, out_dir, config, data, split_entries)
    card = _card(
        config,
        model,
        weights_path,
        calibration,
        _data_facts(data_dirs, data, config, len(lesion_donors), split_file),
        {
            "command": command,
            "config": asdict(config),
            "started_from": started_from,
            "epochs_run": progress.epochs_done,
            "best_epoch": progress.best_epoch,
            "best_val_loss": round(float(progress.best_loss), 5),
            "shipped_val_loss": round(calibration.shipped_loss, 5),
            "seconds": round(sitting.elapsed()),
            "resumed": progress.resumed,
            "machine": f"{machine()}, TensorFlow {tf.__version__}",
            "code_version": version,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    card_path = out_dir / f"{config.name}.json"
    write_card(card_path, card)
    card = finish_card(card_path, data.root, _log)  # calibration, decision rule, per-source figures, the input gate
    if finished:
        checkpoint.path.unlink(missing_ok=True)
    _log(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB) in {sitting.elapsed():.0f}s")
    return card


@dataclass(frozen=True)
class TrainingData:
    """The data stage's result: the decoded images, their split into train / validation / held out (whole split
    units on one side), each image's allowed-label mask and each training image's sampling weight."""

    data: Dataset
    files: int  # files found, decoded or not
    rejected: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    held_idx: np.ndarray
    masks: np.ndarray
    probabilities: np.ndarray
    root: Path  # the folder that holds the training folders: the split file's paths are relative to it

    def entries(self, indices: np.ndarray) -> list[list[str]]:
        """[path relative to ``root``, label] of each image: the split file's rows."""
        items = self.data.items
        return [[str(items[i].path.resolve().relative_to(self.root)), items[i].label] for i in indices]

    def images(self, indices: np.ndarray) -> list[np.ndarray]:
        return [self.data.images[i] for i in indices]


def load_training_data(data_dirs: Sequence[Path], config: TrainConfig) -> TrainingData:
    """Find, decode and split the training folders (logged); ValueError when they hold no image."""
    items = discover(data_dirs)
    if not items:
        raise ValueError(f"no PNG, JPEG or DICOM files in <class>/ folders under {', '.join(map(str, data_dirs))}")
    _log(f"{len(items)} files in {len(data_dirs)} folder(s)")
    data, rejected = load(items, _log)
    assign_units(data, config.twin_threshold)
    _log(f"decoded {len(data.images)}, rejected {rejected}; {len(set(data.units))} split units")
    train_idx, val_idx, held_idx = split_dataset(data, config)
    assert not set(data.units[train_idx]) & set(data.units[val_idx]), "a split unit straddles the split"
    masks = label_masks(data.labels)
    probabilities = sampling_weights(data, train_idx, config)
    root = Path(os.path.commonpath([str(Path(d).resolve().parent) for d in data_dirs]))
    return TrainingData(data, len(items), rejected, train_idx, val_idx, held_idx, masks, probabilities, root)


@dataclass(frozen=True)
class ValidationSet:
    """The validation images as the model sees them at inference, with what scoring them needs."""

    inputs: np.ndarray
    items: list[Item]
    labels: list[str]
    masks: np.ndarray

    @classmethod
    def of(cls, data: TrainingData, spec: InputSpec) -> ValidationSet:
        items = [data.data.items[i] for i in data.val_idx]
        inputs = inference_inputs(data.images(data.val_idx), spec)
        return cls(inputs, items, [item.label for item in items], data.masks[data.val_idx])

    def loss(self, logits: np.ndarray) -> float:
        """:func:`source_balanced_nll` of the model's logits on these inputs."""
        return source_balanced_nll(logits, self.masks, [item.source for item in self.items], self.labels)


def _augmentation_sources(data: TrainingData, config: TrainConfig) -> tuple[list[np.ndarray], list[Donor]]:
    """The histograms' reference crops (every 7th training image) and the tumour-transplant donors (logged)."""
    references = [
        resize_square(crop_square(image, find_brain(image).box), config.size)
        for image in data.images(data.train_idx[::7])
    ]
    lesion_donors = donors([data.data.items[i] for i in data.train_idx], data.images(data.train_idx))
    _log(
        f"train {len(data.train_idx)}, validation {len(data.val_idx)}, held out {len(data.held_idx)}; "
        f"{len(lesion_donors)} donors"
    )
    return references, lesion_donors


def build_trainer(
    config: TrainConfig,
    data: TrainingData,
    split_entries: list[list[str]],
    references: list[np.ndarray],
    lesion_donors: list[Donor],
) -> tuple[Any, dict[str, str] | None, Any]:
    """(the compiled model, the model it starts from when ``config.init`` names one, the stream of training
    batches): AdamW on a cosine schedule with a linear warm-up."""
    import keras

    model = build_model(config)
    started_from = initial_weights(model, Path(config.init), config.input_spec, split_entries) if config.init else None
    if started_from:
        _log(f"starting from {started_from['version']}")
    stream = batches(
        data.data.images, data.train_idx, data.probabilities, data.masks, config, references, lesion_donors
    )
    steps = config.epochs * len(stream)
    warmup = min(config.warmup_epochs * len(stream), steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10, steps - warmup, alpha=0.02, warmup_target=config.learning_rate, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=allowed_label_nll)
    return model, started_from, stream


def _resume(checkpoint: Checkpoint, model: Any, code_version: str) -> Progress:
    """Where the run stands: restored from its checkpoint (the resume noted in it), or a new start."""
    progress = checkpoint.restore(model) if checkpoint.path.is_file() else Progress()
    if progress.epochs_done:
        _log(f"resuming from {checkpoint.path.name} after epoch {progress.epochs_done} ({progress.seconds:.0f}s)")
        progress.resumed.append({"after_epoch": progress.epochs_done, "code_version": code_version})
    return progress


@dataclass(frozen=True)
class Sitting:
    """What every epoch of this sitting needs: the settings, where the run stands (updated each epoch), its
    checkpoint, the validation set, and when the sitting started (the time budget counts earlier sittings too)."""

    config: TrainConfig
    progress: Progress
    checkpoint: Checkpoint
    validation: ValidationSet
    started: float

    def elapsed(self) -> float:
        return self.progress.seconds + time.time() - self.started


def _fit(model: Any, stream: Any, sitting: Sitting) -> bool:
    """Train the epochs left (:func:`end_epoch` after each); False when Ctrl-C cut them short (the checkpoint is
    kept, and the best epoch so far is finished)."""
    import keras

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            end_epoch(sitting, self.model, epoch, logs or {})

    config, progress = sitting.config, sitting.progress
    try:
        if progress.epochs_done < config.epochs and not progress.stopped:
            model.fit(
                stream, epochs=config.epochs, initial_epoch=progress.epochs_done, verbose=0, callbacks=[EpochEnd()]
            )
        return True
    except KeyboardInterrupt:  # Ctrl-C: keep the best epoch so far and finish calibration and the card
        resumes = sitting.checkpoint.path
        _log(f"interrupted: finishing with the best epoch so far; the same command resumes from {resumes}")
        return False


def end_epoch(sitting: Sitting, model: Any, epoch: int, logs: dict[str, float]) -> None:
    """After each epoch: print validation figures, keep the best weights, stop early or at the time budget, and
    save a checkpoint that the same command resumes from after an interruption."""
    config, progress = sitting.config, sitting.progress
    logits = np.asarray(model.predict(sitting.validation.inputs, batch_size=128, verbose=0))
    val_loss = sitting.validation.loss(logits)  # one pass an epoch
    _log(
        f"epoch {epoch + 1}/{config.epochs} loss {logs.get('loss', float('nan')):.4f} "
        f"val_loss {val_loss:.4f} {_source_figures(logits, sitting.validation.items)} "
        f"lr {float(model.optimizer.learning_rate):.2e} ({sitting.elapsed():.0f}s)"
    )
    if epoch == progress.epochs_done:  # the first epoch of this sitting
        _warn_when_over_budget(sitting, epoch)
    progress.epochs_done = epoch + 1
    if val_loss < progress.best_loss:
        progress.best_loss, progress.best_epoch = val_loss, epoch + 1
        progress.best_weights = model.get_weights()
    if progress.epochs_done - progress.best_epoch >= config.patience:
        _log(f"no better validation loss for {config.patience} epochs: stopping")
        progress.stopped = True
    if sitting.elapsed() > config.max_minutes * 60:
        _log(f"time budget of {config.max_minutes:g} minutes reached: stopping")
        progress.stopped = True
    model.stop_training = progress.stopped
    sitting.checkpoint.save(model, progress, sitting.elapsed())


def _source_figures(logits: np.ndarray, items: Sequence[Item]) -> str:
    """Accuracy, tumour sensitivity and specificity of each source, for the epoch's log line."""
    return " ".join(
        f"{source}[acc {r.get('accuracy') or 0:.3f} sens {r.get('tumour_sensitivity') or 0:.3f} "
        f"spec {r.get('tumour_specificity') or 0:.3f}]"
        for source, r in source_report(softmax(logits), items).items()
    )


def _warn_when_over_budget(sitting: Sitting, epoch: int) -> None:
    """Say so when, at the pace of the sitting's first epoch, the schedule would overrun the time budget."""
    config = sitting.config
    if sitting.elapsed() * config.epochs / (epoch + 1) > config.max_minutes * 60:
        fits = max(1, int(config.max_minutes * 60 / (sitting.elapsed() / (epoch + 1))))
        _log(
            f"at this machine's pace {config.epochs} epochs overrun the {config.max_minutes:g}-minute "
            f"budget: training stops near epoch {fits}, before the learning rate has decayed; "
            f"--epochs {fits} schedules a whole run that fits, --max-minutes a longer budget"
        )


def _restore_kept_epoch(model: Any, progress: Progress, data: TrainingData, config: TrainConfig) -> None:
    """The best epoch's weights, with batch-normalisation statistics recomputed on clean training inputs."""
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    rng = np.random.default_rng((config.seed, 3))
    draw = rng.choice(data.train_idx, size=min(3000, len(data.train_idx)), p=data.probabilities)
    recalibrate_batchnorm(model, inference_inputs(data.images(draw), config.input_spec))
    _log(f"batch-normalisation statistics recomputed on {len(draw)} clean training inputs")


@dataclass(frozen=True)
class ValidationFit:
    """The shipped weights' validation loss, the calibration fitted on it, and the validation report."""

    shipped_loss: float
    temperature: float
    negative_bias: float
    report: dict[str, Any]


def _calibrate(model: Any, validation: ValidationSet, progress: Progress, spec: InputSpec) -> ValidationFit:
    """Fit the temperature and the no-tumour bias on validation scans of a known class (never the web-style
    ones), and measure the calibrated model on the whole validation set (logged)."""
    logits = np.asarray(model.predict(validation.inputs, batch_size=128, verbose=0))
    shipped_loss = validation.loss(logits)
    _log(f"validation loss of the kept epoch {progress.best_loss:.4f}, after recomputing statistics {shipped_loss:.4f}")
    known = np.array([label in CLASSES for label in validation.labels])  # never fit on the web-style scans
    temperature, negative_bias = fit_calibration(logits[known], validation.masks[known], CLASSES.index(NEGATIVE))
    bias = negative_bias_vector(negative_bias)
    report = validation_report(logits, validation.labels, temperature, validation.inputs, model, spec, bias)
    headline = ("accuracy", "tumour_sensitivity", "tumour_specificity", "expected_calibration_error")
    headline += ("unknown_type_tumour_recall", "shortcut_probe_tumour_recall", "lesion_probe_tumour_recall")
    _log(f"validation {json.dumps({k: report.get(k) for k in headline})}")
    return ValidationFit(shipped_loss, temperature, negative_bias, report)


def _save_model(
    model: Any, out_dir: Path, config: TrainConfig, data: TrainingData, split_entries: list[list[str]]
) -> tuple[Path, Path]:
    """Write ``<name>.keras`` and ``<name>.split.json``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{config.name}.keras"
    model.compile(optimizer="adam", loss=None)  # keep the custom loss out of the saved file
    model.save(weights_path)
    split_file = out_dir / f"{config.name}.split.json"
    split = {
        "root": "paths are relative to the folder that holds the training folders",
        "validation": split_entries,
        "held_out": data.entries(data.held_idx),
    }
    split_file.write_text(json.dumps(split, indent=0))
    return weights_path, split_file


def _card(
    config: TrainConfig,
    model: Any,
    weights_path: Path,
    calibration: ValidationFit,
    data_facts: dict[str, Any],
    training_facts: dict[str, Any],
) -> dict[str, Any]:
    """The model card before :func:`core.training.finish.finish_card` completes it."""
    weights_sha256 = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    return {
        "name": config.name,
        "version": f"{config.version}+{weights_sha256[:8]}",  # every retrain is a distinct version in the records
        "labels": list(CLASSES),
        "negative_label": NEGATIVE,
        "input": asdict(config.input_spec),
        "output": "logits",
        "threshold": 0.5,
        "calibration": {"temperature": calibration.temperature, "logit_bias": {NEGATIVE: calibration.negative_bias}},
        "weights": {"file": weights_path.name, "sha256": weights_sha256},
        "parameters": int(model.count_params()),
        "metrics": {"validation": calibration.report},
        "data": data_facts,
        "training": training_facts,
    }


def _data_facts(
    data_dirs: Sequence[Path], data: TrainingData, config: TrainConfig, lesion_donors: int, split_file: Path
) -> dict[str, Any]:
    """The card's ``data``: the folders, how many files were read, and the split per source and label."""
    return {
        "folders": [str(d) for d in data_dirs],
        "files": data.files,
        "decoded": len(data.data.images),
        "rejected": data.rejected,
        "per_source": split_counts(data),
        "split_units": "patients (LGG), subjects (Normal-heads), near-identical-twin groups (48x48 thumbnail "
        f"correlation >= {config.twin_threshold}) elsewhere; a unit never straddles the split",
        "lesion_donors": lesion_donors,
        "train": len(data.train_idx),
        "validation": len(data.val_idx),
        "held_out": len(data.held_idx),
        "split_file": split_file.name,
    }


def split_counts(data: TrainingData) -> dict[str, dict[str, dict[str, int]]]:
    """Images per source, label and side of the split (train, validation, held out)."""
    items, labels = data.data.items, data.data.labels
    sides = {"train": data.train_idx, "validation": data.val_idx, "held_out": data.held_idx}
    return {
        source: {
            label: {
                side: sum(1 for i in indices if items[i].source == source and labels[i] == label)
                for side, indices in sides.items()
            }
            for label in sorted({item.label for item in items if item.source == source})
        }
        for source in sorted({item.source for item in items})
    }
