"""Train and measure the lesion segmenter: ``python -m core train-lesion --out models/ [--folds | --fold INST...]``.

With ``--folds`` each of the three LGG institutions (CS, DU, FG) is left out in turn (``--fold`` names some of them:
those whose backbone exists, the others added by a later call), with a third of the
Normal-heads subjects: a network trained on the rest is scored on the held-out sections through the app's own path
(the original file read, the brain found, the crop segmented and mapped back onto the slice), against the
hand-drawn masks at their own resolution. Then the shipped network is trained on everything and its card
(``btd-lesion.json``) records the pooled held-out figures. Figures (95 % intervals: Wilson for rates, a bootstrap
over sections for medians):

- Dice per section with >= 300 mask pixels, median, per sequence (FLAIR, T1, T1c);
- localisation hit rate: sections with >= 300 mask pixels whose predicted lesion overlaps the mask at all;
- false lesions: predicted area >= 100 px on LGG tumour-free sections and on held-out Normal-heads subjects;
- volume agreement per held-out patient (FLAIR sections): Spearman of predicted vs drawn lesion pixels;
- cost: one slice's segmentation, p50 and p95 on this machine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.metrics import machine, wilson_interval
from core.imaging import read_scan_file
from core.model.card import sha256_file
from core.model.lesion import LesionCard, Segmenter
from core.model.roi import find_brain
from core.training.cache import CropCache
from core.training.card_io import write_card
from core.training.segment import SegmentConfig, backbone_card, check_backbone, check_tune, train_segmenter

INSTITUTIONS = ("CS", "DU", "FG")
LESION_PX, FALSE_PX = 300, 100  # the issue's section thresholds, in the original slices' pixels


def _log(message: str) -> None:
    print(f"[train-lesion {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fold_indices(cache: CropCache, held: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) section indices: the LGG institution ``held`` and every third Normal-heads subject
    out; None: everything trains, nothing is held out. Training's tumour scans (no masks) are never used."""
    source, label, unit = cache.source, cache.label, cache.unit
    usable = (source == "LGG") | (source == "Normal-heads") | ((source == "Training") & (label == "notumor"))
    if held is None:
        return np.flatnonzero(usable), np.array([], dtype=int)
    subjects = sorted(set(unit[source == "Normal-heads"]))
    held_subjects = {s for k, s in enumerate(subjects) if k % len(INSTITUTIONS) == INSTITUTIONS.index(held)}
    out = ((source == "LGG") & (cache.institution == held)) | (
        (source == "Normal-heads") & np.isin(unit, sorted(held_subjects))
    )
    return np.flatnonzero(usable & ~out), np.flatnonzero(out)


def _truth(root: Path, relative: str, shape: tuple[int, int]) -> np.ndarray:
    """The hand-drawn mask of an LGG glioma slice (any sequence: the FLAIR mask of that section), else empty."""
    path = Path(relative)
    if path.parts[:2] != ("LGG", "glioma"):
        return np.zeros(shape, bool)
    section = path.stem.rsplit("_", 1)[0]
    return read_scan_file(root / "LGG" / "masks" / f"{section}.png").pixels > 127


def score_sections(segmenter: Segmenter, root: Path, cache: CropCache, indices: np.ndarray) -> list[dict[str, Any]]:
    """One row per held-out section: source, sequence, patient, drawn and predicted areas, overlap, Dice."""
    rows = []
    for start in range(0, len(indices), 32):
        chosen = indices[start : start + 32]
        slices = [read_scan_file(root / str(cache.path[i])).pixels for i in chosen]
        boxes = [find_brain(pixels).box for pixels in slices]
        for i, pixels, probability in zip(chosen, slices, segmenter.probabilities(slices, boxes), strict=True):
            predicted = probability >= segmenter.card.threshold
            truth = _truth(root, str(cache.path[i]), pixels.shape)
            overlap = int((predicted & truth).sum())
            drawn, found = int(truth.sum()), int(predicted.sum())
            rows.append(
                {
                    "source": str(cache.source[i]),
                    "sequence": str(cache.sequence[i]),
                    "patient": str(cache.unit[i]),
                    "drawn": drawn,
                    "found": found,
                    "overlap": overlap,
                    "dice": 2 * overlap / (drawn + found) if drawn + found else 1.0,
                }
            )
    return rows


def _median_interval(values: list[float], seed: int = 0) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "interval": None}
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, (1000, len(data))), axis=1)
    low, high = np.percentile(medians, (2.5, 97.5))
    return {"n": len(values), "median": round(float(np.median(data)), 3), "interval": [round(low, 3), round(high, 3)]}


def _rate(hits: int, n: int) -> dict[str, Any]:
    return {"n": n, "rate": round(hits / n, 3) if n else None, "interval": wilson_interval(hits, n)}


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable") for x in (a, b)]
    return round(float(np.corrcoef(*ranks)[0, 1]), 3)


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's figures from held-out section rows (see the module's docstring)."""
    lesion = [r for r in rows if r["drawn"] >= LESION_PX]
    dice = {
        seq: _median_interval([r["dice"] for r in lesion if r["sequence"] == seq]) for seq in ("flair", "t1", "t1c")
    }
    lgg_free = [r for r in rows if r["source"] == "LGG" and r["drawn"] == 0]
    normal = [r for r in rows if r["source"] == "Normal-heads"]
    patients: dict[str, list[int]] = {}
    for r in rows:
        if r["source"] == "LGG" and r["sequence"] == "flair":
            patients.setdefault(r["patient"], [0, 0])
            patients[r["patient"]][0] += r["found"]
            patients[r["patient"]][1] += r["drawn"]
    found, drawn = [v[0] for v in patients.values()], [v[1] for v in patients.values()]
    return {
        "dice_median": dice,
        "hit_rate": _rate(sum(r["overlap"] > 0 for r in lesion), len(lesion)),
        "false_lesions_lgg_tumour_free": _rate(sum(r["found"] >= FALSE_PX for r in lgg_free), len(lgg_free)),
        "false_lesions_normal_heads": _rate(sum(r["found"] >= FALSE_PX for r in normal), len(normal)),
        "volume_spearman_per_patient": {"n": len(patients), "rho": _spearman(found, drawn)},
    }


def timing(segmenter: Segmenter, repeats: int = 30) -> dict[str, float]:
    pixels = np.zeros((256, 256), np.uint8)
    pixels[40:220, 50:210] = 120
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        segmenter.lesion(pixels, (50, 40, 210, 220), (1.0, 1.0))
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50": round(float(np.median(samples)), 1), "p95": round(float(np.percentile(samples, 95)), 1)}


def in_memory(network: Any, size: int, threshold: float = 0.5) -> Segmenter:
    return Segmenter(LesionCard("btd-lesion", "dev", "", "", size, threshold), network)


def train_lesion(
    cache_path: Path, root: Path | None, out_dir: Path, config: SegmentConfig, folds: Sequence[str], command: str
) -> dict[str, Any]:
    """The shipped network on everything first (its card written at once), then each institution of ``folds`` left
    out in turn, each fold's network saved beside the card (``btd-lesion.fold-CS.keras``). With ``root`` (the raw
    training folders) every fold is scored as it comes and its figures go into the card, the pooled figures over
    every fold scored so far; without it (a machine that has the cache but not the folders: the accelerator) the
    networks are only trained, and a later call with ``root`` scores them without training again. Resuming skips
    whatever is already done; a later call may add folds. Other settings, or a backbone that differs from the one a
    network was trained on (rewritten in place), train everything again."""
    import keras

    cache = CropCache.load(cache_path)
    size = int(cache.crops.shape[1])
    unknown = sorted(set(folds) - set(INSTITUTIONS))
    if unknown:
        raise ValueError(f"no LGG institution {', '.join(unknown)}: the folds are {', '.join(INSTITUTIONS)}")
    backbones = _backbones(config, folds, size)  # every backbone checked before anything is trained
    card_path = out_dir / "btd-lesion.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    settings = json.loads(json.dumps(asdict(config)))  # tuples: lists
    defaults = json.loads(json.dumps(asdict(SegmentConfig())))  # a setting newer than the card: its default then
    same = card is not None and {**defaults, **card["training"]["config"]} == settings
    known = card["training"].get("backbones", {}) if same else {}
    if not same or any(known.get(k, v) != v for k, v in backbones.items()):  # a backbone rewritten in place
        card = _ship(cache, out_dir, config, command, backbones)
    card["training"]["backbones"] = {**card["training"]["backbones"], **backbones}
    write_card(card_path, card, trailing_newline=True)
    rows_path = out_dir / "btd-lesion.rows.jsonl"  # the held-out sections' rows, for the pooled figures
    for held in [i for i in INSTITUTIONS if i in folds]:
        weights = out_dir / f"btd-lesion.fold-{held}.keras"
        if held in card["figures"]["per_fold"] or (root is None and weights.is_file()):
            continue
        train, test = fold_indices(cache, held)
        if weights.is_file():
            network = keras.saving.load_model(weights, compile=False)
        else:
            _log(f"fold {held}: {len(train)} training sections, {len(test)} held out")
            network = train_segmenter(cache, train, config, _log, held)
            network.save(weights)
        if root is None:
            continue
        rows = score_sections(in_memory(network, size), root, cache, test)
        kept = rows_path.read_text().splitlines() if rows_path.is_file() else []
        kept = [line for line in kept if json.loads(line)["fold"] != held]  # a fold scored before a crash: again
        rows_path.write_text("".join(f"{line}\n" for line in kept + [json.dumps({"fold": held, **r}) for r in rows]))
        card["figures"]["per_fold"][held] = figures(rows)
        pooled = [json.loads(line) for line in rows_path.read_text().splitlines()]
        card["figures"]["pooled"] = figures(pooled)
        card["figures"]["pooled"]["folds"] = sorted(card["figures"]["per_fold"])
        write_card(card_path, card, trailing_newline=True)
        _log(f"fold {held}: {json.dumps(card['figures']['per_fold'][held])}")
    return card


def _backbones(config: SegmentConfig, folds: Sequence[str], size: int) -> dict[str, str]:
    """The weights hash of each backbone ("shipped" and each fold's institution), checked; empty for a U-Net."""
    check_tune(config)
    if config.fold_backbones and not folds:
        raise ValueError("--fold-backbones goes with --folds or --fold")
    hashes = {}
    for fold in [None, *folds]:
        card = backbone_card(config, fold)
        if card is not None:
            hashes[fold or "shipped"] = check_backbone(card, size, fold)
    return hashes


def _ship(
    cache: CropCache, out_dir: Path, config: SegmentConfig, command: str, backbones: dict[str, str]
) -> dict[str, Any]:
    """Train the shipped network on every usable section, save it and write its card (figures to come)."""
    size = int(cache.crops.shape[1])
    train, _ = fold_indices(cache, None)
    _log(f"shipped network: {len(train)} training sections")
    network = train_segmenter(cache, train, config, _log)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "btd-lesion.keras"
    network.save(weights)
    card = {
        "name": "btd-lesion",
        "version": "1.0.0",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights": {"file": weights.name, "sha256": sha256_file(weights)},
        "input": {"size": size, "channels": 1, "crop": True, "scaling": "unit"},
        "threshold": 0.5,
        "training": {
            "command": command,
            "config": asdict(config),
            "network": _network_text(config),
            "backbones": backbones,
            "sections": len(train),
            "machine": machine(),
        },
        "figures": {
            "protocol": "leave one LGG institution out (CS, DU, FG), a third of Normal-heads subjects with it",
            "pooled": None,
            "per_fold": {},
            "segmentation_ms": timing(in_memory(network, size)),
        },
    }
    (out_dir / "btd-lesion.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "btd-lesion.rows.jsonl").unlink(missing_ok=True)
    for stale in out_dir.glob("btd-lesion.fold-*.keras"):  # trained with other settings: never scored under these
        stale.unlink()
    return card


def _network_text(config: SegmentConfig) -> str:
    if not config.backbone:
        return f"U-Net, base width {config.width}, trained from scratch"
    raw = json.loads(Path(config.backbone).read_text())
    return (
        f"decoder ({4 * config.width} channels) on the network of {raw.get('name')} {raw.get('version')}, "
        f"{f'its {config.tune} coarsest resolutions fine-tuned' if config.tune else 'frozen'}; "
        f"each fold on its own backbone ({config.fold_backbones or '-'}), which left that institution out but trained "
        "on most Normal-heads subjects, those a fold holds out among them: the folds' Normal-heads figure is optimistic"
    )
