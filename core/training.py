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

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.classifier import decide
from core.errors import NoBrainFound, ScanError
from core.imaging import read_scan_file
from core.metrics import UNKNOWN_TYPE, classification_report, machine
from core.preprocess import InputSpec, crop_square, resize_square, square_to_input, to_model_input
from core.roi import find_brain

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
NEGATIVE = "notumor"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in the card)."""

    size: int = 160
    widths: tuple[int, ...] = (24, 48, 96, 192)
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_epochs: int = 2
    patience: int = 10
    max_minutes: float = 75.0
    val_fraction: float = 0.2
    unknown_val_fraction: float = 0.35
    unknown_weight: float = 3.0
    mirror: bool = True
    synthetic_lesions: float = 0.0  # share of normal training scans that also train with a painted lesion
    rotation: float = 15.0  # augmentation turns scans by up to this many degrees either way
    init: str | None = None  # a model card to start from (fine-tuning); it must have been validated on this split
    twin_threshold: float = 0.97
    seed: int = 20261125
    name: str = "btd-cnn"
    version: str = "1.4.0"

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.size, channels=2 if self.mirror else 1, mirror=self.mirror)


@dataclass
class Dataset:
    """Decoded training images (uint8 gray, full frame) with labels, sources and twin groups."""

    paths: list[Path]
    labels: list[str]
    images: list[np.ndarray]
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


# --- data ---------------------------------------------------------------------------------------------------


def collect(data_dirs: Sequence[Path]) -> list[tuple[Path, str]]:
    """``DIR/<label>/*`` for each DIR; labels must be the four classes or ``tumour``."""
    found: list[tuple[Path, str]] = []
    for root in data_dirs:
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
            if folder.name not in (*CLASSES, UNKNOWN_TYPE):
                raise ValueError(f"unknown class folder {folder}")
            found += [(p, folder.name) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return found


def load(items: Sequence[tuple[Path, str]], log: Any = None) -> tuple[Dataset, dict[str, int]]:
    """Decode every file with the app's reader; files it rejects are counted and left out."""
    dataset = Dataset(paths=[], labels=[], images=[])
    rejected: dict[str, int] = {}
    for i, (path, label) in enumerate(items):
        try:
            pixels = read_scan_file(path).pixels
            find_brain(pixels)
        except ScanError as error:
            rejected[error.code] = rejected.get(error.code, 0) + 1
            continue
        dataset.paths.append(path)
        dataset.labels.append(label)
        dataset.images.append(pixels)
        if log and (i + 1) % 1000 == 0:
            log(f"read {i + 1}/{len(items)} images")
    return dataset, rejected


def thumbnails(images: Sequence[np.ndarray], side: int = 48) -> np.ndarray:
    """Zero-mean, unit-norm 48 x 48 thumbnails: their dot product is the Pearson correlation."""
    rows = np.stack([cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).ravel() for img in images])
    rows = rows.astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def twin_groups(thumbs: np.ndarray, threshold: float) -> np.ndarray:
    """Union-find over pairs with correlation >= ``threshold``; returns a group id per image."""
    parent = np.arange(len(thumbs))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(thumbs), 1024):
        block = thumbs[start : start + 1024] @ thumbs.T
        for a, b in zip(*np.nonzero(block >= threshold), strict=True):
            i, j = root(start + int(a)), root(int(b))
            if i != j:
                parent[max(i, j)] = min(i, j)
    return np.array([root(i) for i in range(len(thumbs))])


def split(labels: Sequence[str], groups: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stratified group split: each label's groups are shuffled and taken until the label's validation share."""
    rng = np.random.default_rng(config.seed)
    labels_arr = np.asarray(labels)
    val: list[int] = []
    for label in sorted(set(labels)):
        fraction = config.unknown_val_fraction if label == UNKNOWN_TYPE else config.val_fraction
        members = np.nonzero(labels_arr == label)[0]
        label_groups = np.unique(groups[members])
        rng.shuffle(label_groups)
        target, taken = fraction * len(members), 0
        for g in label_groups:
            if taken >= target:
                break
            chosen = [int(i) for i in np.nonzero(groups == g)[0]]
            val += chosen
            taken += sum(labels_arr[i] == label for i in chosen)
    val_idx = np.array(sorted(set(val)))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def label_masks(labels: Sequence[str]) -> np.ndarray:
    """(N, 4) allowed-label masks: one-hot for a known class, every tumour class for ``tumour``."""
    masks = np.zeros((len(labels), len(CLASSES)), np.float32)
    for i, label in enumerate(labels):
        if label == UNKNOWN_TYPE:
            masks[i] = [c != NEGATIVE for c in CLASSES]
        else:
            masks[i, CLASSES.index(label)] = 1.0
    return masks


def sample_weights(labels: Sequence[str], groups: np.ndarray, unknown_weight: float) -> np.ndarray:
    """1 / twin-group size, balanced so every known class carries equal total weight; mean weight 1."""
    labels_arr = np.asarray(labels)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].astype(np.float64)
    for label in CLASSES:
        members = labels_arr == label
        if members.any():
            weights[members] /= weights[members].sum()
    unknown = labels_arr == UNKNOWN_TYPE
    if unknown.any() and (~unknown).any():
        weights[unknown] = unknown_weight * weights[~unknown].mean()
    return (weights / weights.mean()).astype(np.float32)


# --- augmentation -------------------------------------------------------------------------------------------


def match_histogram(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Re-render uint8 ``image`` with the intensity distribution of uint8 ``reference`` (CDF matching)."""
    src_cdf = np.cumsum(np.bincount(image.ravel(), minlength=256)).astype(np.float64)
    ref_cdf = np.cumsum(np.bincount(reference.ravel(), minlength=256)).astype(np.float64)
    mapping = np.interp(src_cdf / src_cdf[-1], ref_cdf / ref_cdf[-1], np.arange(256))
    return mapping.astype(np.uint8)[image]


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise with unit standard deviation (for irregular outlines and texture)."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(sigma, 0.5))
    return noise / max(float(noise.std()), 1e-6)


def synthetic_lesion(square: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Paste a random tumour-like lesion into a uint8 square brain crop; None when none fits or it would not show.

    The training collection has almost no axial tumour scans in web style: every axial web slice is normal, so a
    network can learn "axial web slice = no tumour". A lesion painted into those very slices (irregular outline,
    bright, dark or ring-enhancing, optional oedema halo and mass effect pushing the anatomy aside) is a tumour scan
    of that source, so the slice's look stops predicting the label.
    """
    side = square.shape[0]
    # Bright tissue by Otsu, not the crop's outline (find_brain): that one takes in the face and neck on sagittal and
    # low axial slices, and lesions then land in orbits and sinuses.
    _, bright = cv2.threshold(cv2.GaussianBlur(square, (5, 5), 0), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    head = cv2.drawContours(np.zeros_like(square), [max(contours, key=cv2.contourArea)], -1, 255, cv2.FILLED)
    inner = cv2.erode(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.3 * side) | 1,) * 2))
    ys, xs = np.nonzero(inner)
    if len(xs) < 20:
        return None
    brain = square[head > 0].astype(np.float32)
    median, high = float(np.median(brain)), float(np.percentile(brain, 99))
    pick = int(rng.integers(len(xs)))
    cx, cy = float(xs[pick]), float(ys[pick])
    radius = side * rng.uniform(0.05, 0.15)
    angle, aspect = rng.uniform(0, np.pi), rng.uniform(0.65, 1.0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    rho = np.sqrt(dx * dx + dy * dy) + 1e-6
    image = square.astype(np.float32)
    # 0 on the head's outline (3 px in), 1 from 8 % of the side further in: skull and background stay put
    inside = np.clip((cv2.distanceTransform(head, cv2.DIST_L2, 5) - 3) / (0.08 * side), 0, 1)
    if rng.random() < 0.5:  # mass effect: tissue around the lesion pushed outwards
        falloff = np.where(rho < radius, rho / radius, np.exp(-(((rho - radius) / radius) ** 2)))
        push = rng.uniform(0.1, 0.4) * radius * falloff * inside
        image = cv2.remap(image, xx - dx / rho * push, yy - dy / rho * push, cv2.INTER_LINEAR)
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius * aspect)
    dist = np.sqrt(u * u + v * v) + 0.25 * _smooth_noise((side, side), radius / 2, rng)
    texture = 1.0 + rng.uniform(0.03, 0.15) * _smooth_noise((side, side), rng.uniform(1, 3), rng)
    kind = rng.choice(("bright", "dark", "ring"))
    if kind == "bright":
        core, level = 1.0, rng.uniform(max(median, 0.8 * high), 1.15 * high)
    elif kind == "dark":
        core, level = 1.0, rng.uniform(0.25, 0.7) * median
    else:
        core, level = rng.uniform(0.5, 0.8), rng.uniform(0.25, 0.8) * median
    rim = rng.uniform(max(median, 0.85 * high), 1.15 * high)
    if rng.random() < 0.5:  # oedema: a soft halo, brighter or darker than the tissue it replaces
        halo = np.clip((1.0 + rng.uniform(0.3, 1.0) - dist) / 0.5, 0, 1) * rng.uniform(0.2, 0.5) * inside
        image = image * (1 + halo * rng.choice((-0.4, 0.5)))
    edge = rng.uniform(0.5, 2.0)
    outer = cv2.GaussianBlur((dist < 1.0).astype(np.float32), (0, 0), edge) * inside
    inner_core = cv2.GaussianBlur((dist < core).astype(np.float32), (0, 0), edge) * inside
    image = image * (1 - outer) + rim * texture * (outer - inner_core) + level * texture * inner_core
    painted = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    lesion = outer > 0.5
    contrast = np.abs(painted[lesion].astype(np.float32) - square[lesion]).mean() if lesion.sum() >= 20 else 0.0
    return painted if contrast >= max(20.0, 0.5 * float(brain.std())) else None  # an invisible lesion is no tumour


def move_frame(pixels: np.ndarray, angle: float, scale: float = 1.0, shift: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """The whole frame turned by ``angle`` degrees and scaled about its centre, then shifted by ``shift`` (x, y) as
    shares of its width and height, black fill: how a head can sit in a scan from elsewhere."""
    height, width = pixels.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[:, 2] += np.asarray(shift, np.float64) * (width, height)
    return cv2.warpAffine(pixels, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)


def augment(
    pixels: np.ndarray,
    rng: np.random.Generator,
    spec: InputSpec,
    reference: np.ndarray | None,
    lesion: bool = False,
    rotation: float = TrainConfig.rotation,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One randomly varied model input from a full-frame slice, through the inference crop and scaling.

    With ``lesion`` the second value is the same input with a synthetic lesion painted into the crop (None when no
    visible one fits): every other random choice is shared, so the pair differs only by the lesion.
    """
    angle, scale = rng.uniform(-rotation, rotation), rng.uniform(0.9, 1.1)
    moved = move_frame(pixels, angle, scale, rng.uniform(-0.06, 0.06, 2))
    if rng.random() < 0.5:
        moved = np.ascontiguousarray(moved[:, ::-1])
    try:
        box = find_brain(moved, margin=rng.uniform(0.0, 0.12)).box
    except NoBrainFound:
        moved, box = pixels, find_brain(pixels).box
    square = crop_square(moved, box)
    if rng.random() < 0.3:
        square = resize_square(square, int(rng.integers(spec.size // 3, spec.size)))
    square = resize_square(square, spec.size)
    painted = synthetic_lesion(square, rng) if lesion else None
    if painted is None:
        return _vary_appearance(square, rng, spec, reference), None
    twin = copy.deepcopy(rng)  # the lesioned copy takes the same appearance draws
    return _vary_appearance(square, rng, spec, reference), _vary_appearance(painted, twin, spec, reference)


def _vary_appearance(
    square: np.ndarray, rng: np.random.Generator, spec: InputSpec, reference: np.ndarray | None
) -> np.ndarray:
    """Histogram, gamma, contrast, brightness, blur, noise and JPEG quality, then the inference scaling."""
    if reference is not None and rng.random() < 0.25:
        square = match_histogram(square, reference)
    x = square.astype(np.float32) / 255.0
    x = x ** math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
    x = (x - 0.5) * rng.uniform(0.75, 1.25) + 0.5 + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.3))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.04), x.shape).astype(np.float32)
    image = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
        if ok:
            image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return square_to_input(image, spec)


# --- model --------------------------------------------------------------------------------------------------


def build_model(config: TrainConfig) -> Any:
    """A small VGG-style CNN (conv-BN-ReLU pairs, max-pooling, global average pooling) ending in 4 logits."""
    import keras
    from keras import layers

    inputs = keras.Input((config.size, config.size, config.input_spec.channels), name="scan")
    x = layers.Conv2D(config.widths[0], 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
    for stage, width in enumerate(config.widths):
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
        if stage < len(config.widths) - 1:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(len(CLASSES), name="logits")(x)
    return keras.Model(inputs, outputs, name=config.name)


def allowed_label_nll(masks: Any, logits: Any) -> Any:
    """-log P(true label set): -log p_c for a known class, -log(1 - p_notumor) for a tumour of unknown type."""
    from keras import ops

    log_p = ops.log_softmax(logits, axis=-1)
    return -ops.logsumexp(log_p + (masks - 1.0) * 1e4, axis=-1)


def _batches(images, indices, masks, weights, config, references, epoch_seed):
    import keras

    negative, share = CLASSES.index(NEGATIVE), config.synthetic_lesions  # share 0 draws nothing: 1.4.0's stream
    tumour_mask = label_masks([UNKNOWN_TYPE])[0]

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.array(indices)

        def __len__(self) -> int:
            return math.ceil(len(indices) / config.batch_size)

        def __getitem__(self, i: int):
            rng = np.random.default_rng((epoch_seed, self.epoch, i))
            if i == 0:
                self.order = np.random.default_rng((epoch_seed, self.epoch)).permutation(indices)
            chosen = self.order[i * config.batch_size : (i + 1) * config.batch_size]
            spec, inputs, batch_masks, batch_weights = config.input_spec, [], [], []
            for j in chosen:
                reference = references[int(rng.integers(len(references)))]
                lesion = bool(masks[j, negative] == 1.0) and share > 0 and rng.random() < share
                x, with_lesion = augment(images[j], rng, spec, reference, lesion, config.rotation)
                rows = [(x, masks[j])]
                if with_lesion is not None:  # its twin with a lesion: a tumour scan of this source, subtype unknown
                    rows.append((with_lesion, tumour_mask))
                for model_input, mask in rows:
                    inputs.append(model_input)
                    batch_masks.append(mask)
                    batch_weights.append(weights[j])
            return np.stack(inputs), np.stack(batch_masks), np.asarray(batch_weights, np.float32)

        def on_epoch_end(self) -> None:
            self.epoch += 1

    return AugmentedBatches()


def initial_weights(model: Any, card_path: Path, spec: InputSpec, split_entries: list[list[str]]) -> dict[str, str]:
    """Copy a trained model's weights into ``model`` (fine-tuning); returns its version and weights' SHA-256.

    Refused unless it takes the same input and was validated on exactly this run's validation split: otherwise the
    new model would be trained on scans it is then judged on.
    """
    from core.classifier import Classifier

    start = Classifier.from_card(card_path)  # checks the weights' SHA-256
    if start.card.input != spec:
        raise ValueError(f"{card_path} takes {start.card.input}, this run {spec}")
    split_file = split_file_of(card_path)
    if not split_file.is_file() or json.loads(split_file.read_text())["validation"] != split_entries:
        raise ValueError(f"{card_path} was not validated on this run's split: fine-tuning it would leak")
    model.set_weights(start.model.get_weights())
    return {"version": start.card.version, "sha256": start.card.weights_sha256}


def inference_inputs(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Model inputs exactly as the app computes them (crop, square, resize, scale)."""
    return np.stack([to_model_input(img, find_brain(img).box, spec) for img in images])


def mean_nll(logits: np.ndarray, masks: np.ndarray, temperature: float = 1.0) -> float:
    """Mean allowed-label NLL of rows of logits (the training loss, unweighted): the validation loss."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    allowed = np.where(masks > 0, log_p, -np.inf)
    top = allowed.max(axis=1, keepdims=True)
    return float(-(top[:, 0] + np.log(np.exp(allowed - top).sum(axis=1))).mean())


def fit_temperature(logits: np.ndarray, masks: np.ndarray) -> float:
    """Temperature minimising the allowed-label NLL on validation logits (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        return mean_nll(logits, masks, math.exp(log_t))

    low, high = math.log(0.25), math.log(8.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return round(math.exp((low + high) / 2), 4)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- resuming -----------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands after its last finished epoch (what a checkpoint holds besides the variables)."""

    epochs_done: int = 0
    seconds: float = 0.0  # training time of the earlier parts of a resumed run
    best_loss: float = math.inf
    best_epoch: int = 0
    best_weights: list[np.ndarray] | None = None
    stopped: bool = False  # early, by patience or the time budget
    resumed: list[dict[str, Any]] = field(default_factory=list)


def run_key(config: TrainConfig, split_entries: list[list[str]]) -> str:
    """Identifies a run: its settings (all but the time budget) and its validation split. A checkpoint resumes only
    the run it came from."""
    settings = {**asdict(config), "max_minutes": None}
    text = json.dumps({"config": settings, "validation": split_entries}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """``<out>/<name>.checkpoint.npz``, rewritten after every epoch: every model variable (the dropout's random
    state included), the optimizer's (its step count drives the learning-rate schedule), the best epoch's weights
    and :class:`Progress`. Rerunning the same command after an interruption resumes from it with the same random
    streams, so the weights are those of an uninterrupted run; it is deleted once the run has written its model."""

    path: Path
    key: str

    def save(self, model: Any, progress: Progress, seconds: float) -> None:
        arrays = {f"model_{i}": np.asarray(v) for i, v in enumerate(model.variables)}
        arrays |= {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
        arrays |= {f"best_{i}": w for i, w in enumerate(progress.best_weights or [])}
        state = {**asdict(progress), "best_weights": None, "seconds": seconds, "key": self.key}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("wb") as out:  # a file object: numpy would otherwise append ".npz" to the name
            np.savez(out, state=np.array(json.dumps(state)), **arrays)
        os.replace(partial, self.path)  # a kill while writing leaves the previous checkpoint whole

    def restore(self, model: Any) -> Progress:
        """Load the checkpoint into a compiled ``model``; refused when it belongs to another run."""
        with np.load(self.path) as saved:
            state = json.loads(str(saved["state"]))
            if state.pop("key") != self.key:
                raise ValueError(
                    f"{self.path} belongs to another run (other settings or split): delete it or change --out"
                )
            model.optimizer.build(model.trainable_variables)
            for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
                for i, variable in enumerate(variables):
                    variable.assign(saved[f"{prefix}_{i}"])
            best = [saved[name] for name in sorted((k for k in saved.files if k.startswith("best_")), key=_index)]
        return Progress(**{**state, "best_weights": best or None})


def _index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


# --- the run ------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _code_version() -> str:
    """The commit that runs, with ``-dirty`` when the working tree has uncommitted changes."""
    try:
        command = ["git", "describe", "--always", "--dirty", "--abbrev=7"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def share_called_tumour(model: Any, inputs: Sequence[np.ndarray], temperature: float) -> float:
    """Share of model inputs the app's rule would call a tumour."""
    logits = np.asarray(model.predict(np.stack(inputs), batch_size=64, verbose=0))
    labels = decide(softmax(logits / temperature), CLASSES, NEGATIVE)
    return float(np.mean([label != NEGATIVE for label in labels]))


def validation_report(
    logits: np.ndarray, labels: Sequence[str], temperature: float, inputs: np.ndarray, model: Any, spec: InputSpec
) -> dict[str, Any]:
    """Metrics on the validation split, web-style tumour recall, and the histogram and lesion shortcut probes."""
    probs = softmax(logits / temperature)
    report = classification_report(labels, probs, CLASSES, NEGATIVE)
    uncalibrated = classification_report(labels, softmax(logits), CLASSES, NEGATIVE)
    report["expected_calibration_error_uncalibrated"] = uncalibrated.get("expected_calibration_error")
    labels_arr = np.asarray(labels)
    known = np.isin(labels_arr, CLASSES)
    report["mean_confidence"] = float(probs.max(axis=1)[known].mean()) if known.any() else None
    # Shortcut probe: known-subtype tumour scans re-rendered with a random notumor scan's histogram.
    tumour_rows = np.nonzero(known & (labels_arr != NEGATIVE))[0]
    normal_rows = np.nonzero(labels_arr == NEGATIVE)[0]

    def crop(row: int) -> np.ndarray:  # the grayscale channel back to uint8
        return (inputs[row, :, :, 0] * 255).astype(np.uint8)

    if len(tumour_rows) and len(normal_rows):
        rng = np.random.default_rng(0)
        probe = []
        for i in tumour_rows:
            ref = crop(rng.choice(normal_rows))
            probe.append(square_to_input(match_histogram(crop(i), ref), spec))
        report["shortcut_probe_tumour_recall"] = share_called_tumour(model, probe, temperature)
        report["shortcut_probe_n"] = len(tumour_rows)
    # Lesion probe: normal validation scans (never trained on) with a synthetic lesion painted in.
    rng = np.random.default_rng(1)
    painted = [synthetic_lesion(crop(i), rng) for i in normal_rows]
    probe = [square_to_input(p, spec) for p in painted if p is not None]
    if probe:
        report["lesion_probe_tumour_recall"] = share_called_tumour(model, probe, temperature)
        report["lesion_probe_n"] = len(probe)
    return report


def train(data_dirs: Sequence[Path], out_dir: Path, config: TrainConfig, command: str) -> dict[str, Any]:
    """Run the whole training; writes ``<name>.keras``, ``<name>.json`` (card) and ``<name>.split.json``."""
    import keras
    import tensorflow as tf

    started = time.time()
    code_version = _code_version()  # the code that runs, not whatever HEAD is when training ends
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    items = collect(data_dirs)
    if not items:
        raise ValueError(f"no PNG, JPEG or DICOM files in <class>/ folders under {', '.join(map(str, data_dirs))}")
    _log(f"{len(items)} files in {len(data_dirs)} folder(s)")
    data, rejected = load(items, _log)
    data.groups = twin_groups(thumbnails(data.images), config.twin_threshold)
    n_groups = len(np.unique(data.groups))
    _log(f"decoded {len(data.images)}, rejected {rejected}; {n_groups} twin groups")
    train_idx, val_idx = split(data.labels, data.groups, config)
    assert not set(data.groups[train_idx]) & set(data.groups[val_idx]), "a twin group straddles the split"
    masks = label_masks(data.labels)
    weights = sample_weights(data.labels, data.groups, config.unknown_weight)
    spec = config.input_spec
    val_inputs = inference_inputs([data.images[i] for i in val_idx], spec)
    val_labels = [data.labels[i] for i in val_idx]
    references = [
        resize_square(crop_square(data.images[i], find_brain(data.images[i]).box), config.size) for i in train_idx[::7]
    ]
    _log(f"train {len(train_idx)}, validation {len(val_idx)} images")
    root = Path(os.path.commonpath([str(Path(d).resolve().parent) for d in data_dirs]))
    split_entries = [[str(data.paths[i].resolve().relative_to(root)), data.labels[i]] for i in val_idx]

    model = build_model(config)
    started_from = initial_weights(model, Path(config.init), spec, split_entries) if config.init else None
    if started_from:
        _log(f"starting from {started_from['version']}")
    batches = _batches(data.images, train_idx, masks, weights, config, references, config.seed)
    steps = config.epochs * len(batches)
    warmup = min(config.warmup_epochs * len(batches), steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10, steps - warmup, alpha=0.02, warmup_target=config.learning_rate, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=allowed_label_nll)
    checkpoint = Checkpoint(out_dir / f"{config.name}.checkpoint.npz", run_key(config, split_entries))
    progress = checkpoint.restore(model) if checkpoint.path.is_file() else Progress()
    if progress.epochs_done:
        _log(f"resuming from {checkpoint.path.name} after epoch {progress.epochs_done} ({progress.seconds:.0f}s)")
        progress.resumed.append({"after_epoch": progress.epochs_done, "code_version": code_version})
    batches.epoch = progress.epochs_done  # the augmentation stream of the epoch it resumes at

    def elapsed() -> float:
        return progress.seconds + time.time() - started

    class EpochLog(keras.callbacks.Callback):
        """Prints validation figures each epoch, keeps the best weights, stops early or at the time budget, and
        saves a checkpoint that the same command resumes from after an interruption."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logits = np.asarray(self.model.predict(val_inputs, batch_size=128, verbose=0))
            report = classification_report(val_labels, softmax(logits), CLASSES, NEGATIVE)
            val_loss = mean_nll(logits, masks[val_idx])  # one validation pass an epoch
            _log(
                f"epoch {epoch + 1}/{config.epochs} loss {(logs or {}).get('loss', float('nan')):.4f} "
                f"val_loss {val_loss:.4f} val_acc {report.get('accuracy', 0):.4f} "
                f"sens {report['tumour_sensitivity']:.4f} spec {report['tumour_specificity']:.4f} "
                f"web {report['unknown_type_tumour_recall'] or 0:.3f} "
                f"lr {float(self.model.optimizer.learning_rate):.2e} ({elapsed():.0f}s)"
            )
            if epoch == 0 and elapsed() * config.epochs > config.max_minutes * 60:
                fits = max(1, int(config.max_minutes * 60 / elapsed()))
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
                batches, epochs=config.epochs, initial_epoch=progress.epochs_done, verbose=0, callbacks=[EpochLog()]
            )
        finished = True
    except KeyboardInterrupt:  # Ctrl-C: keep the best epoch so far and finish calibration and the card
        _log(f"interrupted: finishing with the best epoch so far; the same command resumes from {checkpoint.path}")
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    logits = np.asarray(model.predict(val_inputs, batch_size=128, verbose=0))
    temperature = fit_temperature(logits, masks[val_idx])
    report = validation_report(logits, val_labels, temperature, val_inputs, model, spec)
    headline = ("accuracy", "tumour_sensitivity", "tumour_specificity", "expected_calibration_error")
    headline += ("unknown_type_tumour_recall", "shortcut_probe_tumour_recall", "lesion_probe_tumour_recall")
    _log(f"temperature {temperature}; validation {json.dumps({k: report.get(k) for k in headline})}")

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{config.name}.keras"
    model.compile(optimizer="adam", loss=None)  # keep the custom loss out of the saved file
    model.save(weights_path)
    split_file = out_dir / f"{config.name}.split.json"
    split_file.write_text(
        json.dumps(
            {"root": "paths are relative to the folder that holds the training folders", "validation": split_entries},
            indent=0,
        )
    )
    weights_sha256 = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    card = {
        "name": config.name,
        "version": f"{config.version}+{weights_sha256[:8]}",  # every retrain is a distinct version in the records
        "labels": list(CLASSES),
        "negative_label": NEGATIVE,
        "input": asdict(spec),
        "output": "logits",
        "calibration": {"temperature": temperature, "fitted_on": "validation split (allowed-label NLL)"},
        "weights": {"file": weights_path.name, "sha256": weights_sha256},
        "parameters": int(model.count_params()),
        "metrics": {"validation": report},
        "data": {
            "folders": [str(d) for d in data_dirs],
            "files": len(items),
            "decoded": len(data.images),
            "rejected": rejected,
            "twin_groups": n_groups,
            "twin_rule": f"48x48 thumbnail correlation >= {config.twin_threshold}; groups never straddle the split",
            "train": len(train_idx),
            "validation": len(val_idx),
            "validation_per_label": {label: val_labels.count(label) for label in sorted(set(val_labels))},
            "split_file": split_file.name,
        },
        "training": {
            "command": command,
            "config": asdict(config),
            "started_from": started_from,
            "epochs_run": progress.epochs_done,
            "best_val_loss": round(float(progress.best_loss), 5),
            "seconds": round(elapsed()),
            "resumed": progress.resumed,
            "machine": f"{machine()}, TensorFlow {tf.__version__}",
            "code_version": code_version,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    card_path = out_dir / f"{config.name}.json"
    card_path.write_text(json.dumps(card, indent=2))
    _log(f"input gate fitted: {fit_gate(card_path, root)}")
    card = json.loads(card_path.read_text())
    if finished:
        checkpoint.path.unlink(missing_ok=True)
    _log(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB) in {elapsed():.0f}s")
    return card


def split_file_of(card_path: Path) -> Path:
    """The validation split file written beside a model card (``<name>.split.json``)."""
    return card_path.with_name(card_path.stem + ".split.json")


def read_split(split_file: Path, root: Path) -> list[tuple[str, Path]]:
    """(label, path) of the validation files a split file lists, under ``root``."""
    entries = json.loads(split_file.read_text())["validation"]
    return [(label, root / relative) for relative, label in entries]


def fit_gate(card_path: Path, root: Path, quantile: float = 0.995) -> dict[str, Any]:
    """Fit the gate's energy threshold on the validation split and write the gate policy into the card.

    Returns the fitted threshold and the share of validation scans the whole gate then rejects.
    """
    from core.classifier import Classifier
    from core.gate import GatePolicy, energy, fit_energy_threshold, image_reasons, write_policy
    from core.imaging import read_scan_file

    classifier = Classifier.from_card(card_path)
    card = classifier.card
    energies, image_rejected = [], 0
    files = read_split(split_file_of(card_path), root)
    for _, path in files:
        scan = read_scan_file(path)
        region = find_brain(scan.pixels)
        raw, _ = classifier.scores(to_model_input(scan.pixels, region.box, card.input)[None])
        energies.append(energy(raw[0], card.temperature))
        image_rejected += bool(image_reasons(scan, region, GatePolicy()))
    threshold = fit_energy_threshold(energies, quantile)
    rejected = sum(bool(e > threshold) for e in energies) + image_rejected
    policy = GatePolicy(max_energy=threshold)
    write_policy(card_path, policy, f"validation split ({len(files)} scans), energy quantile {quantile}")
    return {
        "max_energy": threshold,
        "validation_scans": len(files),
        "validation_rejected_at_most": rejected,
        "validation_rejected_fraction_at_most": round(rejected / len(files), 4),
    }
