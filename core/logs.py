"""The process's log: one structured line per event on stderr (``event=... code=...``), for the app and the command
line alike. A failure's line names its exception type and where it was raised (file and line, innermost first),
never its message, which may quote a value, a path, a header or an address."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from types import TracebackType

FRAMES = 8  # the innermost frames named


class OneLine(logging.Formatter):
    def formatException(self, ei: tuple[type[BaseException] | None, object, TracebackType | None]) -> str:  # type: ignore[override]
        kind, _, trace = ei
        if kind is None:
            return ""
        frames = traceback.extract_tb(trace)[-FRAMES:][::-1]
        return f"exception={kind.__name__} at=" + ",".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " ")


def configure_logging() -> None:
    """Set up once per process (idempotent)."""
    logger = logging.getLogger("btd")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLine("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
