"""What every CSV the app writes shares: no cell a spreadsheet would run (the batch table, the statistics and the
audit trail all pass their cells through :func:`spreadsheet_safe`)."""

from __future__ import annotations

from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting with ``= + - @``, tab or CR gets a leading
    apostrophe (OWASP's advice against formula injection); numbers and other values pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
