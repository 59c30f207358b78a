"""Training data: decode the images, find the split units (patients, subjects, near-identical-twin groups),
split them, and weigh them so that neither a class, a source nor a prolific patient dominates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ScanError
from core.evaluation.neighbours import crop_thumbnail, neighbour_pairs, thumbnails, twin_scores
from core.imaging import read_scan_file
from core.model.decision import UNKNOWN_TYPE
from core.model.roi import find_brain
from core.training.config import CLASSES, NEGATIVE, TrainConfig
from core.training.sources import Item


@dataclass
class Dataset:
    """Decoded training images (uint8 gray, full frame) with their items and split units."""

    items: list[Item]
    images: list[np.ndarray]
    units: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # "source:unit" per image
    twins: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # twin group id, -1 for a named unit

    @property
    def labels(self) -> list[str]:
        return [item.label for item in self.items]

    @property
    def paths(self) -> list[Any]:
        return [item.path for item in self.items]


def load(items: Sequence[Item], log: Any = None) -> tuple[Dataset, dict[str, int]]:
    """Decode every file with the app's reader; files it rejects are counted and left out."""
    dataset = Dataset(items=[], images=[])
    rejected: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            pixels = read_scan_file(item.path).pixels
            find_brain(pixels)
        except ScanError as error:
            rejected[error.code] = rejected.get(error.code, 0) + 1
            continue
        dataset.items.append(item)
        dataset.images.append(pixels)
        if log and (i + 1) % 2000 == 0:
            log(f"read {i + 1}/{len(items)} images")
    return dataset, rejected


def twin_groups(thumbs: np.ndarray, threshold: float) -> np.ndarray:
    """A group id per image: images joined (:func:`joined`) by pairs with correlation >= ``threshold`` as stored
    or mirrored left-right (:func:`core.evaluation.neighbours.twin_scores`: mirrored copies fell on both sides of
    the split), the correlations computed a block of rows at a time."""
    pairs = [
        (start + int(a), int(b))
        for start in range(0, len(thumbs), 1024)
        for a, b in zip(*np.nonzero(twin_scores(thumbs[start : start + 1024], thumbs) >= threshold), strict=True)
    ]
    return joined(np.arange(len(thumbs)), pairs)


def assign_units(data: Dataset, threshold: float) -> None:
    """Split units: the patient or subject a source names, else a group found by the pixels (over every image
    without a named unit, so twins across those sources share a group): near-identical twins, joined with their
    numbered neighbours (:mod:`core.evaluation.neighbours`: adjacent sections of one patient, which twins alone
    left on both sides of the split, flattering the public collection's validation figures)."""
    pool = [i for i, item in enumerate(data.items) if not item.unit]
    units = np.array([f"{item.source}:{item.unit}" for item in data.items], dtype=object)
    twins = np.full(len(data.items), -1)
    if pool:
        groups = twin_groups(thumbnails([data.images[i] for i in pool]), threshold)
        crops = np.stack([crop_thumbnail(data.images[i]) for i in pool])
        groups = joined(groups, neighbour_pairs([data.items[i].path for i in pool], crops))
        for i, group in zip(pool, groups, strict=True):
            units[i], twins[i] = f"twins:{group}", int(group)
    data.units, data.twins = units, twins


def joined(groups: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """``groups`` with the groups of each pair of members merged (union-find; the smallest id names a group)."""
    parent = {int(g): int(g) for g in groups}

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for i, j in pairs:
        a, b = root(int(groups[i])), root(int(groups[j]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(int(g)) for g in groups])


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
    val_idx = np.array(sorted(set(val)), dtype=int)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def split_dataset(data: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, held-out) indices. Twin groups split as :func:`split` (stratified by label); named
    units (patients, subjects) by unit within each source and institution; whole institutions in
    ``config.hold_out`` go to the held-out set. A unit never straddles two sets."""
    items = data.items
    held = np.array(
        [i for i, item in enumerate(items) if item.institution and item.institution in config.hold_out], dtype=int
    )
    twins = [i for i, item in enumerate(items) if not item.unit and i not in set(held)]
    train_parts, val_parts = [], []
    if twins:
        t_idx, v_idx = split([items[i].label for i in twins], data.twins[twins], config)
        train_parts.append(np.asarray(twins)[t_idx])
        val_parts.append(np.asarray(twins)[v_idx])
    held_set = set(held.tolist())
    named: dict[tuple[str, str], list[str]] = {}
    for i, item in enumerate(items):
        if item.unit and i not in held_set:
            units = named.setdefault((item.source, item.institution), [])
            if item.unit not in units:
                units.append(item.unit)
    chosen: set[str] = set()
    rng = np.random.default_rng((config.seed, 2))
    for key in sorted(named):
        units = sorted(named[key])
        rng.shuffle(units)
        take = max(1, round(config.unit_val_fraction * len(units))) if len(units) > 1 else 0
        chosen |= set(units[:take])
    for i, item in enumerate(items):
        if item.unit and i not in held_set:
            (val_parts if item.unit in chosen else train_parts).append(np.array([i]))
    train_idx = np.sort(np.concatenate(train_parts)) if train_parts else np.zeros(0, int)
    val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, int)
    return train_idx.astype(int), val_idx.astype(int), np.sort(held)


def label_masks(labels: Sequence[str]) -> np.ndarray:
    """(N, 4) allowed-label masks: one-hot for a known class, every tumour class for ``tumour``."""
    masks = np.zeros((len(labels), len(CLASSES)), np.float32)
    for i, label in enumerate(labels):
        if label == UNKNOWN_TYPE:
            masks[i] = [c != NEGATIVE for c in CLASSES]
        else:
            masks[i, CLASSES.index(label)] = 1.0
    return masks


def trainable(item: Item, config: TrainConfig) -> bool:
    """Tumour slices whose mask is tiny look normal: training them as tumour teaches noise."""
    return item.tumour_pixels is None or item.label == NEGATIVE or item.tumour_pixels >= config.min_tumour_pixels


def sampling_weights(data: Dataset, indices: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Probabilities (summing to 1) of drawing each of ``indices`` into an epoch: each known class an equal share,
    each source within a class an equal share of it, each split unit within a source one vote shared by its
    slices; unknown-type tumour scans ``unknown_weight`` times the mean known scan."""
    items = [data.items[i] for i in indices]
    units = np.asarray(data.units[indices])
    weights = np.zeros(len(items))
    ok = np.array([trainable(item, config) for item in items])
    for label in {item.label for item in items}:
        in_label = np.array([item.label == label for item in items]) & ok
        sources = sorted({items[k].source for k in np.nonzero(in_label)[0]})
        for source in sources:
            members = np.nonzero(in_label & np.array([item.source == source for item in items]))[0]
            member_units, inverse, counts = np.unique(units[members], return_inverse=True, return_counts=True)
            share = 1.0 / (counts[inverse] * len(member_units))  # one vote per unit, split among its slices
            weights[members] = share / len(sources)
    known = np.array([item.label in CLASSES for item in items])
    unknown = ~known & (weights > 0)
    if unknown.any() and known.any():
        weights[unknown] = weights[unknown] / weights[unknown].sum() * config.unknown_weight * unknown.sum()
        weights[unknown] *= weights[known & (weights > 0)].mean()
    return weights / weights.sum()
