"""The validation split file written beside a model card, read by evaluation and fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path


def split_file_of(card_path: Path) -> Path:
    """The validation split file written beside a model card (``<name>.split.json``)."""
    return card_path.with_name(card_path.stem + ".split.json")


def read_split(split_file: Path, root: Path) -> list[tuple[str, Path]]:
    """(label, path) of the validation files a split file lists, under ``root``; ValueError saying so when the file
    is not a split (a bare ``[]`` gave an internal error, a missing key its Python name)."""
    try:
        entries = json.loads(split_file.read_text())["validation"]
        return [(str(label), root / str(relative)) for relative, label in entries]
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise ValueError(
            f"{split_file.name} is not a split file: no 'validation' list of [path, label] pairs"
        ) from error


def read_held_out(split_file: Path, root: Path) -> list[Path]:
    """The files of the institutions a split left out of everything (a leave-one-institution-out fold), under
    ``root``; none for an ordinary split."""
    return [root / relative for relative, _ in json.loads(split_file.read_text()).get("held_out", [])]
