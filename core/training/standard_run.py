"""Train model 3 for millions of draws, in as many sittings as it takes: ``python -m core train-standard``.

The network and recipe are :mod:`core.training.standard`; the data is the crop cache (:mod:`core.training.cache`,
``python -m core cache``); the validation split is an existing card's split file (``--split``, by default the
shipped model's), so that the new model is judged on exactly the scans its predecessor was; ``--hold-out`` leaves
whole LGG institutions out of training and validation (leave-one-institution-out runs) and scores them apart.

Sampling: each draw picks a stratum, then a crop of it uniformly: Training x each of its 4 classes, LGG x
sequence x {glioma, no tumour} (glioma slices with fewer than ``min_tumour_pixels`` mask pixels left out),
Normal-heads, and Web-tumour (tumour of unknown type) at ``web_weight``. Draw ``k`` of the run comes from a
generator seeded by (seed, k), so the sampler needs no state of its own.

Resuming: the run is cut into rounds of ``round_steps`` optimiser steps (a few minutes on 2 CPU cores); after each
round a checkpoint holds every variable of the network, the augmentation's random state and the optimiser (its step
count drives the learning-rate schedule), and ``<name>.log.jsonl`` gets a line of draws, loss and validation
figures (the learning curve). ``--max-minutes`` ends a sitting after the round that crosses it; the same command
resumes. The last round writes ``<name>.keras``, its card and split file, then calibrates, fits the decision rule,
the input gate and the series rule and measures every source (:func:`core.training.finish.finish_card`).

Annealed branches (``--anneal ROUNDS --branch DIR``): a finished model from a run still in progress, as
warmup-stable-decay schedules make them. The branch starts from the run's latest checkpoint and lets the learning
rate fall linearly from the schedule's value there to zero over ``ROUNDS`` more rounds, with the same draws the run
itself would take; it is resumable like the run, writes its own model, card and learning curve in ``DIR``, and
never touches the run's checkpoint, which resumes as if the branch had not been.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.metrics import machine
from core.evaluation.neighbours import TWIN_THRESHOLD
from core.model.decision import UNKNOWN_TYPE
from core.model.preprocess import InputSpec
from core.training.cache import CropCache, split_indices
from core.training.calibration import softmax
from core.training.checkpoint import Checkpoint, Progress, run_key
from core.training.config import CLASSES, NEGATIVE
from core.training.data import label_masks
from core.training.probes import source_report
from core.training.sources import Item
from core.training.standard import AugmentSettings, batch_augment, build_resnet, smoothed_allowed_label_nll


@dataclass(frozen=True)
class StandardConfig:
    """Everything that determines a model-3 run (recorded in the card)."""

    size: int = 128
    width: int = 32  # ResNet-18 layout at half width: 2.8 M parameters
    draws: int = 2_000_000
    batch_size: int = 64
    round_steps: int = 250  # a checkpoint every 16,000 draws (about 4 minutes on 2 CPU cores)
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    label_smoothing: float = 0.05
    min_tumour_pixels: int = 100
    web_weight: float = 0.5
    hold_out: tuple[str, ...] = ()
    # a training crop that is a validation crop's twin, as stored or mirrored, is left out (None: kept, as shipped)
    twin_threshold: float | None = TWIN_THRESHOLD
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    seed: int = 20261204
    name: str = "btd-resnet"
    version: str = "3.0.0"

    @property
    def rounds(self) -> int:
        return math.ceil(math.ceil(self.draws / self.batch_size) / self.round_steps)

    @property
    def steps(self) -> int:
        """Whole rounds: ``draws`` rounded up to them (the schedule and the card count what is run)."""
        return self.rounds * self.round_steps

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.size, channels=1, scaling="unit")


@dataclass(frozen=True)
class Branch:
    """An annealed branch of a run: ``rounds`` more rounds after round ``after_round`` of the run, in ``out``."""

    out: Path
    rounds: int
    after_round: int = 0  # read from the run's checkpoint when the branch starts, from ``branch.json`` after

    def total(self) -> int:
        return self.after_round + self.rounds


def _log(message: str) -> None:
    print(f"[train-standard {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def strata(cache: CropCache, indices: np.ndarray, config: StandardConfig) -> list[tuple[float, np.ndarray]]:
    """(weight, member indices) of each sampling stratum among ``indices``."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in indices:
        source, label = str(cache.source[i]), str(cache.label[i])
        if source == "LGG":
            if label != NEGATIVE and cache.tumour_pixels[i] < config.min_tumour_pixels:
                continue
            key: tuple[str, ...] = (source, str(cache.sequence[i]), label)
        else:
            key = (source, label)
        groups.setdefault(key, []).append(int(i))
    return [(config.web_weight if key[-1] == UNKNOWN_TYPE else 1.0, np.array(m)) for key, m in sorted(groups.items())]


def draw_batch(
    cache: CropCache, groups: list[tuple[float, np.ndarray]], masks: np.ndarray, config: StandardConfig, key: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """One batch: (N, size, size, 1) float32 crops in [0, 1] and their allowed-label masks, seeded by ``key``."""
    rng = np.random.default_rng((config.seed, *key))
    weights = np.array([w for w, _ in groups])
    chosen = rng.choice(len(groups), size=config.batch_size, p=weights / weights.sum())
    picks = np.array([groups[g][1][rng.integers(len(groups[g][1]))] for g in chosen])
    x = cache.crops[picks].astype(np.float32)[..., None] / 255.0
    return x, masks[picks]


def cache_items(cache: CropCache, indices: np.ndarray, root: Path | None = None) -> list[Item]:
    """The :class:`~core.training.sources.Item` of each cached crop (for the per-source reports)."""
    base = root or Path()
    return [
        Item(
            path=base / str(cache.path[i]),
            label=str(cache.label[i]),
            source=str(cache.source[i]),
            unit=str(cache.unit[i]),
            institution=str(cache.institution[i]),
            sequence=str(cache.sequence[i]),
            plane=str(cache.plane[i]),
            tumour_pixels=None if cache.tumour_pixels[i] < 0 else int(cache.tumour_pixels[i]),
        )
        for i in indices
    ]


def score(network: Any, cache: CropCache, indices: np.ndarray) -> dict[str, Any]:
    """Per-source figures of the network's uncalibrated softmax on cached crops (the learning curve's points)."""
    if not len(indices):
        return {}
    x = cache.crops[indices].astype(np.float32)[..., None] / 255.0
    logits = np.asarray(network.predict(x, batch_size=256, verbose=0))  # numpy on every Keras backend
    report = source_report(softmax(logits), cache_items(cache, indices))
    keep = ("n", "accuracy", "tumour_sensitivity", "tumour_specificity")
    return {source: {k: r.get(k) for k in keep if k in r} for source, r in report.items()}


def train_standard(
    cache_path: Path,
    split_path: Path,
    out_dir: Path,
    config: StandardConfig,
    command: str,
    max_minutes: float = math.inf,
    data_root: Path | None = None,
    validate_every: int = 4,
    deterministic: bool = True,
    anneal: Branch | None = None,
) -> dict[str, Any]:
    """Run (or resume) the schedule; returns the finished card, or ``{"status": "paused", ...}`` when the time
    budget ended this sitting first. Every ``validate_every`` rounds (and after the last) the learning curve gets
    the validation and held-out figures; like ``max_minutes`` it does not change the run. ``deterministic`` False
    (``--fast``, for a GPU; no faster on a CPU): a resume is exact in its state, not bit for bit. ``anneal``: the
    annealed branch of the run in ``out_dir`` instead (the module's docstring)."""
    import keras

    started = time.time()
    keras.utils.set_random_seed(config.seed)
    if deterministic:
        _deterministic_ops(keras.backend.backend())
    cache, split, parts = _data(cache_path, split_path, config)
    masks = label_masks([str(label) for label in cache.label])
    groups = strata(cache, parts["train"], config)
    split_entries = [[str(cache.path[i]), str(cache.label[i])] for i in parts["validation"]]
    checkpoint = Checkpoint(out_dir / f"{config.name}.checkpoint.npz", run_key(config, split_entries))
    start_from, total = checkpoint, config.rounds
    if anneal is not None:
        anneal, checkpoint, start_from = _branch_checkpoints(anneal, checkpoint, config.rounds)
        total, out_dir = anneal.total(), anneal.out
    network, trainer = build_trainer(config, anneal)
    progress = start_from.restore(trainer) if start_from.path.is_file() else Progress()
    if anneal is not None and start_from is not checkpoint:
        _check_branch_start(anneal, progress)
    if progress.epochs_done:
        _log(f"resuming after round {progress.epochs_done}/{total} ({progress.seconds:.0f} s so far)")
        progress.resumed.append({"after_round": progress.epochs_done, "date": datetime.now(UTC).isoformat()})
    out_dir.mkdir(parents=True, exist_ok=True)
    curve = out_dir / f"{config.name}.log.jsonl"

    def stream() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches in order, each a function of its step alone."""
        for step in itertools.count(progress.epochs_done * config.round_steps):
            yield draw_batch(cache, groups, masks, config, (step,))

    def on_round_end(model: Any, logs: dict[str, float], round_seconds: float) -> bool:
        """The learning curve's line, the checkpoint, and the time budget (True: stop), after every round."""
        seconds = progress.seconds + time.time() - started
        line = {
            "round": progress.epochs_done,
            "draws": progress.epochs_done * config.round_steps * config.batch_size,
            "seconds": round(seconds),
            "draws_per_second": round(config.round_steps * config.batch_size / max(1e-6, round_seconds), 1),
            "loss": round(float(logs.get("loss", float("nan"))), 4),
            "learning_rate": float(model.optimizer.learning_rate),
        }
        if progress.epochs_done % validate_every == 0 or progress.epochs_done == total:
            line["validation"] = score(network, cache, parts["validation"])
            line["held_out"] = score(network, cache, parts["held_out"])
        with curve.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        _log(json.dumps(line))
        checkpoint.save(model, progress, seconds)
        return time.time() - started > max_minutes * 60

    batches = stream()
    while progress.epochs_done < total:
        loss, seconds = _train_round(trainer, batches, config.round_steps)
        progress.epochs_done += 1
        if on_round_end(trainer, {"loss": loss}, seconds):
            break
    if progress.epochs_done < total:
        _log(f"paused after round {progress.epochs_done}/{total}; the same command resumes")
        return {"status": "paused", "round": progress.epochs_done, "rounds": total, "checkpoint": str(checkpoint.path)}
    progress.seconds += time.time() - started
    return _write_model(network, cache, parts, split, config, out_dir, command, progress, data_root, anneal)


def _branch_checkpoints(anneal: Branch, run: Checkpoint, rounds: int) -> tuple[Branch, Checkpoint, Checkpoint]:
    """(the branch with the round it starts after, its own checkpoint, the checkpoint it restores: its own when it
    resumes, the run's when it starts)."""
    anneal = _branch_start(anneal, run, rounds)
    own = Checkpoint(anneal.out / run.path.name, f"{run.key}+anneal:{anneal.after_round}:{anneal.rounds}")
    return anneal, own, own if own.path.is_file() else run


def _check_branch_start(anneal: Branch, progress: Progress) -> None:
    """A branch starting from the run's checkpoint must find the round it recorded there."""
    if progress.epochs_done != anneal.after_round:
        (anneal.out / "branch.json").unlink()  # no round of the branch ran: it starts afresh when run again
        raise ValueError(
            f"the run went on to round {progress.epochs_done} before this branch ran a round from round "
            f"{anneal.after_round}: run the command again to branch from round {progress.epochs_done}"
        )


def _branch_start(anneal: Branch, run: Checkpoint, rounds: int) -> Branch:
    """The branch with the round it starts after: the run's latest round when it first starts (``branch.json``
    records it), the recorded one when it resumes. Refused when the run has no checkpoint to start from or has
    finished its schedule (its rate is zero already), when the branch would share the run's folder, or when the
    folder holds a branch of other length."""
    record = anneal.out / "branch.json"
    if anneal.out.resolve() == run.path.parent.resolve():
        raise ValueError("--branch must be another folder than the run's --out")
    if record.is_file():
        started = json.loads(record.read_text())
        if started["rounds"] != anneal.rounds:
            raise ValueError(f"{anneal.out} holds a branch of {started['rounds']} rounds: use another --branch")
        return replace(anneal, after_round=int(started["after_round"]))
    if not run.path.is_file():
        raise FileNotFoundError(f"no checkpoint to branch from: {run.path}")
    branch = replace(anneal, after_round=run.rounds_done())
    if branch.after_round >= rounds:
        raise ValueError("the run has finished its schedule: its own model is the annealed one")
    anneal.out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"run": str(run.path), "after_round": branch.after_round, "rounds": branch.rounds}))
    return branch


def _deterministic_ops(backend: str) -> None:
    """Reductions in a fixed order, so that a paused and resumed run ends with bit-identical weights."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS asks for on a GPU
        torch.use_deterministic_algorithms(True)


def _data(cache_path: Path, split_path: Path, config: StandardConfig) -> tuple[CropCache, dict[str, Any], dict]:
    """The crop cache, the split file, and the cache's train / validation / held-out positions (logged)."""
    cache = CropCache.load(cache_path)
    split = json.loads(split_path.read_text())
    parts = split_indices(cache, split, config.hold_out, config.twin_threshold)
    _log(
        f"{len(cache)} cached crops: train {len(parts['train'])}, validation {len(parts['validation'])}, held out "
        f"{len(parts['held_out'])}, left out as validation twins {len(parts['twins'])}; {config.steps} steps of "
        f"{config.batch_size}"
    )
    return cache, split, parts


def build_trainer(config: StandardConfig, anneal: Branch | None = None) -> tuple[Any, Any]:
    """(the network that is saved, the compiled training model: augmentation, then the network)."""
    import keras

    network = build_resnet(config.size, config.width, name=config.name)
    inputs = keras.Input((config.size, config.size, 1), name="scan")
    trainer = keras.Model(inputs, network(batch_augment(config.augment, config.seed)(inputs)), name="trainer")
    warmup = min(config.warmup_steps, config.steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, config.steps - warmup, alpha=0.0, warmup_target=config.learning_rate, warmup_steps=warmup
    )
    if anneal is not None:
        steps = config.round_steps
        schedule = _linear_decay_after(schedule, anneal.after_round * steps, anneal.rounds * steps)
    trainer.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss=lambda y, z: smoothed_allowed_label_nll(y, z, config.label_smoothing),
    )
    return network, trainer


def _linear_decay_after(schedule: Any, start: int, steps: int) -> Any:
    """``schedule`` up to step ``start``; from there its value at ``start`` falling linearly to zero at
    ``start + steps`` (the step count is the optimiser's, so a resumed branch continues its decay)."""
    import keras

    class LinearDecayAfter(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            step = keras.ops.cast(step, "float32")
            left = keras.ops.clip((start + steps - step) / steps, 0.0, 1.0)
            return keras.ops.where(step < start, schedule(step), schedule(start) * left)

        def get_config(self) -> dict[str, Any]:
            return {"schedule": schedule.get_config(), "start": start, "steps": steps}

    return LinearDecayAfter()


def _train_round(trainer: Any, batches: Iterator[tuple[np.ndarray, np.ndarray]], steps: int) -> tuple[float, float]:
    """One round of ``steps`` optimiser steps: (the round's mean loss, seconds). ``train_on_batch`` in a loop:
    twice the draws a second of ``fit`` on a Python generator on 2 CPU cores (54 against 27, same kernels)."""
    started = time.time()
    losses = [float(trainer.train_on_batch(*next(batches))) for _ in range(steps)]  # each batch's own loss
    return float(np.mean(losses)), time.time() - started


def _schedule_text(config: StandardConfig, anneal: Branch | None) -> str:
    warmup = min(config.warmup_steps, config.steps // 2)
    text = (
        f"AdamW, {warmup} warm-up steps to {config.learning_rate}, cosine to zero over {config.steps} steps of "
        f"{config.batch_size}"
    )
    if anneal is None:
        return text
    return (
        f"{text}, branched after round {anneal.after_round} of {config.rounds} ({config.round_steps} steps each): "
        f"the rate there falling linearly to zero over {anneal.rounds} rounds"
    )


def _write_model(
    network: Any,
    cache: CropCache,
    parts: dict[str, np.ndarray],
    split: dict[str, Any],
    config: StandardConfig,
    out_dir: Path,
    command: str,
    progress: Progress,
    data_root: Path | None,
    anneal: Branch | None = None,
) -> dict[str, Any]:
    """Save the network, its split file and card; then finish the card on the raw files when ``data_root`` is
    given (calibration, decision rule, per-source figures, gate, series rule)."""
    import keras

    from core.training.finish import finish_card

    weights_path = out_dir / f"{config.name}.keras"
    keras.saving.save_model(network, weights_path)
    validation, held_out = (
        [[str(cache.path[i]), str(cache.label[i])] for i in parts[k]] for k in ("validation", "held_out")
    )
    split_file = out_dir / f"{config.name}.split.json"  # what finish_card fits and scores on: the run's own parts
    split_file.write_text(json.dumps({**split, "validation": validation, "held_out": held_out}, indent=0))
    weights_sha256 = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    card = {
        "name": config.name,
        "version": f"{config.version}+{weights_sha256[:8]}",
        "labels": list(CLASSES),
        "negative_label": NEGATIVE,
        "input": asdict(config.input_spec),
        "output": "logits",
        "threshold": 0.5,
        "calibration": {"temperature": 1.0, "logit_bias": {}},
        "weights": {"file": weights_path.name, "sha256": weights_sha256},
        "parameters": int(network.count_params()),
        "architecture": f"ResNet-18 layout (He et al. 2016) at width {config.width}, per-image standardisation "
        "as its first layer, from scratch (no pretrained weights)",
        "metrics": {"validation": {"n": len(parts["validation"])}},
        "data": {
            "folders": sorted({str(source) for source in cache.source}),  # the sources it trained on
            "cache_crops": len(cache),
            "train": len(parts["train"]),
            "validation": len(parts["validation"]),
            "held_out": len(parts["held_out"]),
            "validation_twins_left_out": len(parts["twins"]),  # neither trained on nor scored
            "rejected": cache.rejected,
            "split_file": split_file.name,
        },
        "training": {
            "recipe": "core.training.standard",
            "command": command,
            "config": asdict(config),
            "draws": progress.epochs_done * config.round_steps * config.batch_size,
            "schedule": _schedule_text(config, anneal),
            "seconds": round(progress.seconds),
            "resumed": progress.resumed,
            "machine": machine(),
            "backend": f"keras {keras.__version__} on {keras.backend.backend()}",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "learning_curve": f"{config.name}.log.jsonl",
        },
    }
    card_path = out_dir / f"{config.name}.json"
    card_path.write_text(json.dumps(card, indent=2, default=list))
    _log(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.1f} MB)")
    if data_root is not None:
        card = finish_card(card_path, data_root, _log)
    return card
