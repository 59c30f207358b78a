"""Training data: find and decode the images, group near-identical twins, split, label masks and weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ScanError
from core.imaging import read_scan_file
from core.model.decision import UNKNOWN_TYPE
from core.model.roi import find_brain
from core.training.config import CLASSES, IMAGE_SUFFIXES, NEGATIVE, TrainConfig


@dataclass
class Dataset:
    """Decoded training images (uint8 gray, full frame) with labels, sources and twin groups."""

    paths: list[Path]
    labels: list[str]
    images: list[np.ndarray]
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


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
