"""Where things live. Read from the environment when called, never at import time."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = PROJECT_ROOT / "models"
DEFAULT_MODEL_NAME = "btd-cnn"


def model_card_path() -> Path:
    """The card of the model to serve: ``BTD_MODEL`` (a card path) or the shipped ``models/btd-cnn.json``."""
    configured = os.environ.get("BTD_MODEL")
    return Path(configured) if configured else MODELS_DIR / f"{DEFAULT_MODEL_NAME}.json"
