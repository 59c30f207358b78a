"""Where training images come from, and what each one is: label, source, split unit and acquisition facts.

``--data DIR`` may be given several times; each DIR is one *source*, read as ``DIR/<label>/*``:
- a folder with ``slices.csv`` (the LGG collection) also gives, per slice, the patient, institution, sequence,
  tumour and head areas, and the tumour mask (``masks/<patient>_<slice>.png``): the split unit is the patient;
- file names ``subjNN_<sequence>_<plane>_<index>`` (the Normal-heads collection): the split unit is the subject;
- anything else (the Training and Web-tumour collections): the split unit is the near-identical-twin group,
  decided from the pixels (:mod:`core.training.data`).
A slice's source must never tell its label, so sources are mixed within every class and validation is reported
per source (:mod:`core.training.probes`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.model.decision import UNKNOWN_TYPE
from core.training.config import CLASSES, IMAGE_SUFFIXES

_SUBJECT = re.compile(r"^(subj\d+)_([a-z0-9]+)_(ax|cor|sag)_\d+$")
PLANES = {"ax": "axial", "cor": "coronal", "sag": "sagittal"}


@dataclass(frozen=True)
class Item:
    """One training image and what is known about it (empty strings and None where the source does not say)."""

    path: Path
    label: str
    source: str
    unit: str = ""  # the split unit (patient or subject); "" = decided by twin groups
    institution: str = ""
    sequence: str = ""
    plane: str = ""
    tumour_pixels: int | None = None
    head_pixels: int | None = None
    mask: Path | None = None


def discover(data_dirs: Sequence[Path]) -> list[Item]:
    """Every image under ``DIR/<label>/`` of each DIR, with what its source says about it."""
    items: list[Item] = []
    for root in map(Path, data_dirs):
        table = root / "slices.csv"
        if table.is_file():
            items += _lgg_items(root, table)
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "masks"):
            if folder.name not in (*CLASSES, UNKNOWN_TYPE):
                raise ValueError(f"unknown class folder {folder}")
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                match = _SUBJECT.match(path.stem)
                if match:
                    subject, sequence, plane = match.groups()
                    items.append(Item(path, folder.name, root.name, subject, "", sequence, PLANES[plane]))
                else:
                    items.append(Item(path, folder.name, root.name))
    return items


def _lgg_items(root: Path, table: Path) -> list[Item]:
    items = []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            path = root / row["file"]
            mask = root / "masks" / f"{row['patient']}_{row['slice']}.png"
            items.append(
                Item(
                    path=path,
                    label=row["label"],
                    source=root.name,
                    unit=row["patient"],
                    institution=row["institution"],
                    sequence=row["sequence"],
                    plane="axial",
                    tumour_pixels=int(row["tumour_pixels"]),
                    head_pixels=int(row["head_pixels"]),
                    mask=mask if mask.is_file() else None,
                )
            )
    return sorted(items, key=lambda item: str(item.path))
