"""Sections of one patient that a split by pixels alone puts on both sides.

The public collection names no patients: its split units are near-identical twins (48 x 48 thumbnails correlated
>= 0.97). Its files are numbered in acquisition order, so neighbouring numbers are often neighbouring sections of
one patient: too different to be twins, alike enough to flatter a validation figure when one is trained on and the
next is scored. Two files are *neighbours* when they share a folder and a name but for the number, their numbers
differ by at most ``REACH``, and their brain crops (as the model sees them) correlate >= ``THRESHOLD``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ScanError
from core.imaging import read_scan_file
from core.model.roi import find_brain

REACH = 2  # numbers apart
THRESHOLD = 0.85  # crop correlation; unrelated files this close in number rarely reach it, far apart
TWIN_THRESHOLD = 0.97  # full-frame thumbnail correlation of a near-identical twin (the training split's rule)
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def thumbnails(images: Sequence[np.ndarray], side: int = 48) -> np.ndarray:
    """Zero-mean, unit-norm ``side`` x ``side`` thumbnails: their dot product is the Pearson correlation."""
    rows = np.stack([cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).ravel() for img in images])
    rows = rows.astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def mirrored(thumbs: np.ndarray, side: int = 48) -> np.ndarray:
    """The thumbnails of the images flipped left-right (still zero-mean and unit-norm)."""
    return np.ascontiguousarray(thumbs.reshape(len(thumbs), side, side)[:, :, ::-1].reshape(len(thumbs), -1))


def twin_scores(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Correlation of each of ``rows`` with each of ``others``, as stored or mirrored left-right, whichever is
    higher: a flipped copy of a slice is the same section (the public collection holds hundreds; training flips
    at random, so a mirrored twin across the split was trained on)."""
    return np.maximum(rows @ others.T, rows @ mirrored(others).T)


def crop_thumbnail(pixels: np.ndarray) -> np.ndarray:
    """The thumbnail of a slice's brain crop (the region the model reads)."""
    x0, y0, x1, y1 = find_brain(pixels).box
    return thumbnails([pixels[y0:y1, x0:x1]])[0]


def numbered(path: Path) -> tuple[tuple[str, str], int] | None:
    """(folder and name without the number, the number) of a numbered file name, else None."""
    found = _NUMBERED.match(Path(path).stem)
    return ((str(Path(path).parent), found.group(1)), int(found.group(2))) if found else None


def neighbour_pairs(paths: Sequence[Path], thumbs: np.ndarray, reach: int = REACH, threshold: float = THRESHOLD):
    """Index pairs (i, j) of ``paths`` that are neighbours, from their crop thumbnails (rows of ``thumbs``)."""
    at: dict[tuple[tuple[str, str], int], int] = {}
    for i, path in enumerate(paths):
        key = numbered(path)
        if key is not None:
            at[key] = i
    pairs = []
    for (series, number), i in at.items():
        for step in range(1, reach + 1):
            j = at.get((series, number + step))
            if j is not None and float(thumbs[i] @ thumbs[j]) >= threshold:
                pairs.append((i, j))
    return pairs


def with_trained_neighbour(validation: Sequence[Path], reach: int = REACH, threshold: float = THRESHOLD) -> set[Path]:
    """The validation files that have a neighbour on disk which is not itself a validation file (so was trained
    on, unless held out): their figures are flattered by a section of the same patient seen in training."""
    scored = {Path(p) for p in validation}
    cache: dict[Path, np.ndarray | None] = {}

    def thumb(path: Path) -> np.ndarray | None:
        if path not in cache:
            try:
                cache[path] = crop_thumbnail(read_scan_file(path).pixels)
            except (ScanError, OSError):
                cache[path] = None
        return cache[path]

    flagged = set()
    for path in sorted(scored):
        key = numbered(path)
        if key is None or thumb(path) is None:
            continue
        (_, name), number = key
        width = len(path.stem) - len(name)  # the number as written: zero-padded or not
        candidates = {
            path.with_name(f"{name}{n:0{width}d}{path.suffix}")
            for n in range(max(0, number - reach), number + reach + 1)
            if n != number
        } | {path.with_name(f"{name}{n}{path.suffix}") for n in range(max(0, number - reach), number + reach + 1)}
        own = thumb(path)
        for other in sorted(candidates - scored - {path}):
            other_thumb = thumb(other) if other.exists() else None
            if other_thumb is not None and float(own @ other_thumb) >= threshold:  # type: ignore[operator]
                flagged.add(path)
                break
    return flagged


IMAGES = {".png", ".jpg", ".jpeg"}


def with_trained_twin(validation: Sequence[Path], threshold: float = TWIN_THRESHOLD) -> set[Path]:
    """The validation files with a near-identical twin (full-frame thumbnails correlated >= ``threshold``, as
    stored or mirrored) among the other image files of their source folder (trained on, unless held out): the
    public collection's validation figures counted 566 of its 1,145 files whose mirrored copy was trained on."""
    scored = {Path(p) for p in validation}
    sources, labels = {p.parents[1] for p in scored}, {p.parent.name for p in scored}  # <source>/<label>/<file>
    folders = {source / label for source in sources for label in labels if (source / label).is_dir()}  # no masks
    others = sorted(p for folder in folders for p in folder.iterdir() if p.suffix.lower() in IMAGES and p not in scored)
    if not others:
        return set()
    own, own_paths = _readable(sorted(scored))
    theirs, _ = _readable(others)
    return {path for path, twin in zip(own_paths, has_twin(own, theirs, threshold), strict=True) if twin}


def has_twin(images: Sequence[np.ndarray], among: Sequence[np.ndarray], threshold: float = TWIN_THRESHOLD) -> Any:
    """Whether each of ``images`` has a twin among ``among``: thumbnails correlated >= ``threshold``, as stored or
    mirrored left-right (:func:`twin_scores`)."""
    found = np.zeros(len(images), bool)
    if not len(images) or not len(among):
        return found
    theirs = thumbnails(among)
    for start in range(0, len(images), 512):
        own = thumbnails(images[start : start + 512])
        found[start : start + len(own)] = twin_scores(own, theirs).max(axis=1) >= threshold
    return found


def _readable(paths: Sequence[Path]) -> tuple[list[np.ndarray], list[Path]]:
    images, kept = [], []
    for path in paths:
        try:
            images.append(read_scan_file(path).pixels)
        except (ScanError, OSError):
            continue
        kept.append(path)
    return images, kept
