"""Writing a model card: whole or not at all (a write cut short left the shipped card unreadable, and the app with
no model until it was restored)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_card(path: Path, card: dict[str, Any], trailing_newline: bool = False) -> None:
    """``card`` as indented JSON at ``path``, through a file beside it renamed into place (atomic on one file
    system)."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    draft.write_text(json.dumps(card, indent=2, default=list) + ("\n" if trailing_newline else ""))
    os.replace(draft, path)
