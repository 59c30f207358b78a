"""What every CSV the app writes shares: no cell a spreadsheet would run (the batch table, the statistics and the
audit trail all pass their cells through :func:`spreadsheet_safe`)."""

from __future__ import annotations

import re
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# where a spreadsheet set to another list separator (";" in much of Europe, a tab) starts a new cell inside ours,
# quoted too (``1;"=HYPERLINK(...)"`` is a quoted formula cell there)
_INNER_CELL = re.compile(r'([;\t]\s*"?\s*)(?=[=+\-@])')
# in a line written as text, not through the CSV writer (a heading), a comma or a line break starts one too, and
# the line's own start with a quote
_INNER_TEXT_CELL = re.compile(r'((?:^|[;,\t\r\n])\s*"\s*|[;,\t\r\n]\s*)(?=[=+\-@])')


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting with ``= + - @``, tab or CR gets a leading
    apostrophe (OWASP's advice against formula injection), and so does such text after a ``;`` or a tab (a
    spreadsheet whose list separator is ``;`` splits ``1;=HYPERLINK(...)`` into a formula cell); numbers and other
    values pass unchanged."""
    if not isinstance(value, str):
        return value
    value = _INNER_CELL.sub(r"\1'", value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def text_line_safe(line: str) -> str:
    """A line written into a CSV as text (a heading naming typed filters): as :func:`spreadsheet_safe`, and also
    after a comma or a line break, which open a cell there (in a cell the CSV writer quotes they do not, and a
    reader's note keeps its own text)."""
    line = _INNER_TEXT_CELL.sub(r"\1'", line)
    return "'" + line if line.startswith(_FORMULA_START) else line
