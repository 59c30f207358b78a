"""What every CSV the app writes shares: no cell a spreadsheet would run (the batch table, the statistics and the
audit trail all pass their cells through :func:`spreadsheet_safe`)."""

from __future__ import annotations

import re
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# where a spreadsheet starts a new cell inside ours: set to another list separator (";" in much of Europe, a tab),
# or in a line written as text (a comment heading the audit export or the statistics), at a comma or a line break
_INNER_CELL = re.compile(r"([;,\t\r\n])(\s*)(?=[=+\-@])")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting with ``= + - @``, tab or CR gets a leading
    apostrophe (OWASP's advice against formula injection), and so does such text after a ``;`` or a tab (a
    spreadsheet whose list separator is ``;`` splits ``1;=HYPERLINK(...)`` into a formula cell); numbers and other
    values pass unchanged."""
    if not isinstance(value, str):
        return value
    value = _INNER_CELL.sub(r"\1\2'", value)
    return "'" + value if value.startswith(_FORMULA_START) else value
