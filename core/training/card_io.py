"""Writing a model card: whole or not at all (a write cut short left the shipped card unreadable, and the app with
no model until it was restored), and, for a refit, with the version that names what it now serves in the same
write (a crash between a refit and a second write of its version left new rules under the old version)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

REFIT_PARTS = ("calibration", "decision", "gate", "series")  # what a refit changes in what the app serves


def restamped(card: dict[str, Any]) -> dict[str, Any]:
    """``card`` with the version of a card whose served behaviour was refitted after training: the base version,
    the weights' hash and, after a dot, a hash of the refitted parts. A result's identity includes the version: an
    image read again after a refit must not count as 'already saved' with the old verdict, nor statistics per
    version mix the two. The same fits give the same version (a refit that changed nothing keeps it)."""
    fitted = json.dumps({part: card.get(part) for part in REFIT_PARTS}, sort_keys=True, default=list)
    base = str(card["version"]).split("+")[0]
    version = f"{base}+{card['weights']['sha256'][:8]}.{hashlib.sha256(fitted.encode()).hexdigest()[:8]}"
    return {**card, "version": version}


def write_card(path: Path, card: dict[str, Any], trailing_newline: bool = False, restamp: bool = False) -> None:
    """``card`` as indented JSON at ``path``, through a file beside it renamed into place (atomic on one file
    system); with ``restamp``, under its :func:`restamped` version."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(restamped(card) if restamp else card, indent=2, default=list)
    draft.write_text(text + ("\n" if trailing_newline else ""))
    os.replace(draft, path)
