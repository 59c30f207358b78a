"""A pre-decoded, pre-cropped cache of the training folders: ``python -m core cache --data ROOT --out FILE``.

Every image of the brain sources (Training, Web-tumour, LGG, Normal-heads) goes once through the app's own reader
and brain crop (:func:`core.imaging.read_scan_file`, :func:`core.model.roi.find_brain`,
:func:`core.model.preprocess.crop_square` / :func:`~core.model.preprocess.resize_square`), exactly the inference
path, and is kept as a ``size`` x ``size`` uint8 crop with what its source says about it; LGG tumour masks are
cropped the same way. Training then spends its time in the network instead of decoding JPEGs. About 14,500 crops
of 128 px take 120 MB compressed; the cache lives under the data directory, never in the repository.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ScanError
from core.imaging import read_scan_file
from core.model.preprocess import crop_square, resize_square
from core.model.roi import find_brain
from core.training.sources import Item, discover

BRAIN_SOURCES = ("Training", "Web-tumour", "LGG", "Normal-heads")
_TEXT_FIELDS = ("path", "label", "source", "unit", "institution", "sequence", "plane")


@dataclass
class CropCache:
    """Crops (N, size, size) uint8 and, per crop, its relative path, label, source, split unit, institution,
    sequence, plane and tumour area (-1 where unknown); ``masks`` (N, size, size) uint8 (0 or 255) for LGG
    tumour slices, zeros elsewhere."""

    crops: np.ndarray
    masks: np.ndarray
    path: np.ndarray
    label: np.ndarray
    source: np.ndarray
    unit: np.ndarray
    institution: np.ndarray
    sequence: np.ndarray
    plane: np.ndarray
    tumour_pixels: np.ndarray
    rejected: dict[str, int]

    def __len__(self) -> int:
        return len(self.crops)

    def save(self, out: Path, jpeg_quality: int | None = None) -> None:
        """Write the cache (written aside, then moved into place). ``jpeg_quality``: the crops as JPEG and the
        masks as bits, about a third of the size, for sending the cache to another machine (JPEG is lossy: a
        packed cache is a slightly different training set from the raw one)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        arrays: dict[str, np.ndarray] = {name: np.asarray(getattr(self, name), dtype=str) for name in _TEXT_FIELDS}
        if jpeg_quality is None:
            arrays |= {"crops": self.crops, "masks": self.masks}
        else:
            arrays |= _packed(self.crops, self.masks, jpeg_quality)
        with partial.open("wb") as handle:
            np.savez_compressed(
                handle, tumour_pixels=self.tumour_pixels, rejected=np.array(json.dumps(self.rejected)), **arrays
            )
        os.replace(partial, out)

    @classmethod
    def load(cls, path: Path) -> CropCache:
        """The cache written by ``python -m core cache``; ValueError naming the file when it is none (numpy's own
        advice for a picture given instead was to load it "unsafely", pickles allowed; an empty or cut file was an
        internal error)."""
        try:
            with np.load(path) as saved:
                fields = {name: saved[name] for name in _TEXT_FIELDS}
                crops, masks = _unpacked(saved) if "jpeg" in saved.files else (saved["crops"], saved["masks"])
                return cls(
                    crops=crops,
                    masks=masks,
                    tumour_pixels=saved["tumour_pixels"],
                    rejected=json.loads(str(saved["rejected"])),
                    **fields,
                )
        except (ValueError, KeyError, EOFError, AttributeError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{Path(path).name} is not a crop cache written by `python -m core cache` (or it is cut short): "
                "build one with that command."
            ) from error


def _packed(crops: np.ndarray, masks: np.ndarray, quality: int) -> dict[str, np.ndarray]:
    encoded = []
    for crop in crops:
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError("a crop could not be encoded as JPEG")
        encoded.append(data.ravel())
    return {
        "jpeg": np.concatenate(encoded) if encoded else np.zeros(0, np.uint8),
        "jpeg_ends": np.cumsum([len(data) for data in encoded], dtype=np.int64),
        "mask_bits": np.packbits(masks > 0),
        "shape": np.asarray(crops.shape, np.int64),
    }


def _unpacked(saved: Any) -> tuple[np.ndarray, np.ndarray]:
    shape = tuple(int(v) for v in saved["shape"])
    data, ends = saved["jpeg"], saved["jpeg_ends"]
    crops = np.zeros(shape, np.uint8)
    for i, (start, end) in enumerate(zip(np.r_[0, ends[:-1]], ends, strict=True)):
        crops[i] = cv2.imdecode(data[start:end], cv2.IMREAD_GRAYSCALE)
    count = int(np.prod(shape))
    masks = np.unpackbits(saved["mask_bits"], count=count).reshape(shape).astype(np.uint8) * 255
    return crops, masks


def crop_item(item: Item, size: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(crop, mask crop) of one item through the inference path, or the reader's error code."""
    try:
        pixels = read_scan_file(item.path).pixels
        box = find_brain(pixels).box
    except ScanError as error:
        return error.code
    crop = resize_square(crop_square(pixels, box), size)
    mask = np.zeros_like(crop)
    if item.mask is not None:
        mask_pixels = read_scan_file(item.mask).pixels
        if mask_pixels.shape == pixels.shape:
            mask = (resize_square(crop_square(mask_pixels, box), size) > 127).astype(np.uint8) * 255
    return crop, mask


def _crop_one(args: tuple[Item, int]) -> tuple[np.ndarray, np.ndarray] | str:
    return crop_item(*args)


def build_cache(root: Path, size: int = 128, workers: int = 2, log: Callable[[str], None] = print) -> CropCache:
    """Read every image of the brain sources under ``root`` into a :class:`CropCache`."""
    items = discover([root / source for source in BRAIN_SOURCES if (root / source).is_dir()])
    if not items:
        raise ValueError(f"no brain MRI source folders ({', '.join(BRAIN_SOURCES)}) under {root}")
    kept: list[Item] = []
    crops, masks = [], []
    rejected: dict[str, int] = {}
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (item, result) in enumerate(
            zip(items, pool.map(_crop_one, [(item, size) for item in items], chunksize=64), strict=True)
        ):
            if isinstance(result, str):
                rejected[result] = rejected.get(result, 0) + 1
            else:
                kept.append(item)
                crops.append(result[0])
                masks.append(result[1])
            if (i + 1) % 2000 == 0:
                log(f"cropped {i + 1}/{len(items)}")
    resolved = root.resolve()
    return CropCache(
        crops=np.stack(crops),
        masks=np.stack(masks),
        path=np.array([str(item.path.resolve().relative_to(resolved)) for item in kept]),
        label=np.array([item.label for item in kept]),
        source=np.array([item.source for item in kept]),
        unit=np.array([item.unit for item in kept]),
        institution=np.array([item.institution for item in kept]),
        sequence=np.array([item.sequence for item in kept]),
        plane=np.array([item.plane for item in kept]),
        tumour_pixels=np.array([-1 if item.tumour_pixels is None else item.tumour_pixels for item in kept]),
        rejected=rejected,
    )


def indices_of(cache: CropCache, relative_paths: Sequence[str]) -> np.ndarray:
    """Positions in the cache of the given relative paths (those the cache lacks are left out)."""
    position = {str(p): i for i, p in enumerate(cache.path)}
    return np.array(sorted(position[p] for p in relative_paths if p in position), dtype=int)


def validation_twins(cache: CropCache, train: np.ndarray, validation: np.ndarray, threshold: float) -> np.ndarray:
    """The ``train`` positions whose crop is a twin of a ``validation`` crop, as stored or mirrored left-right
    (:func:`core.evaluation.neighbours.has_twin`), among sources that name no patient (a named one is a split unit
    already): the shipped split left 566 of the public collection's 1,145 validation files' mirrored copies in
    training, which the networks' random flips made seen."""
    from core.evaluation.neighbours import has_twin

    unnamed = np.array([not str(unit) for unit in cache.unit], dtype=bool)
    pool, seen = train[unnamed[train]], validation[unnamed[validation]]
    return pool[has_twin(list(cache.crops[pool]), list(cache.crops[seen]), threshold)]


def split_indices(
    cache: CropCache, split: dict[str, Any], hold_out: Sequence[str] = (), twin_threshold: float | None = None
) -> dict[str, np.ndarray]:
    """train / validation / held_out positions in the cache: as the split file lists them, except that a ``hold_out``
    institution is held out whole, validation patients too (no fitted rule sees it); training is the rest, less
    (with ``twin_threshold``) the crops that are a validation crop's twin (:func:`validation_twins`: ``twins``,
    neither trained on nor scored as held out)."""
    institution = {i for i, inst in enumerate(cache.institution) if inst and str(inst) in hold_out}
    validation = np.array([i for i in indices_of(cache, [p for p, _ in split["validation"]]) if i not in institution])
    held = set(indices_of(cache, [p for p, _ in split.get("held_out", [])]).tolist()) | institution
    held_idx = np.array(sorted(held - set(validation.tolist())), dtype=int)
    used = set(validation.tolist()) | held
    train_idx = np.array([i for i in range(len(cache)) if i not in used], dtype=int)
    twins = np.array([], dtype=int)
    if twin_threshold is not None:
        twins = validation_twins(cache, train_idx, validation.astype(int), twin_threshold).astype(int)
        train_idx = np.setdiff1d(train_idx, twins)
    return {"train": train_idx, "validation": validation.astype(int), "held_out": held_idx, "twins": twins}
