"""What every command shares: JSON on stdout, one line per result, exit codes, usage errors as JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from core.domain.people import MAX_PASSWORD

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_NOT_SAVED = 0, 1, 2, 3  # 3: --save could not save every result


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one JSON line on stdout (and exits 2) instead of free text. Options are
    never abbreviated: ``--password 'secret'`` was taken for ``--password-stdin``, and the secret, left over,
    was quoted back as an unrecognised argument (where a scheduler keeps the output). Unrecognised values are
    not quoted back either."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # each sub-command's parser too (they are made by this class)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self._words = list(sys.argv[1:] if args is None else args)  # what was typed, for error() to leave out
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        known = _options(self)
        for word in getattr(self, "_words", []):  # every word typed that is no option, command or choice, and what
            for part in {word, word.partition("=")[2]} - known - {""}:  # follows an "=", however argparse quotes it
                message = message.replace(repr(part), "'<not repeated>'")  # argparse quotes a value as repr()
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):  # an option of some command is named; anything else (a secret that begins
            # with "-" too) is not repeated
            said = [
                w.split("=")[0] if w.split("=")[0] in known else "<not repeated>"
                for w in message[len(prefix) :].split()
            ]
            message = prefix + " ".join(said) + " (other words are not repeated: one could be a secret; see --help)"
        # a value argparse quotes ("ignored explicit argument 'SECRET'" for --password-stdin=SECRET, "invalid
        # choice: '...'") is repeated only when it is an option, a command or a choice
        message = re.sub(r"'([^']*)'", lambda m: m.group(0) if m.group(1) in known else "'<not repeated>'", message)
        emit({"error": {"code": "bad_usage", "message": message}}, sys.stdout)
        self.exit(EXIT_USAGE)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, command name and choice of ``parser`` and of its commands' parsers: the words a usage
    message may repeat."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= {name} | _options(sub)
        elif action.choices is not None:
            found.update(str(choice) for choice in action.choices)
    return found


class OutputClosed(BrokenPipeError):
    """The reader of what a command writes stopped reading (`| head -1`): the command ends quietly (exit 141). A
    broken pipe of anything else (a worker's) is a failure like any other."""


def write(stream: TextIO, text: str) -> None:
    """``text`` written and flushed; a closed reader is :class:`OutputClosed` (a second flush to tell it apart
    succeeds on a real pipe, the failed one having dropped its buffer: it read as another pipe, a traceback)."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError as error:
        raise OutputClosed(*error.args) from error


def emit(obj: dict[str, Any], stream: TextIO) -> None:
    """One JSON line. A file name that is not valid text (bytes the file system allowed) is escaped, never a
    stop of the batch: a strict stream refuses the lone surrogates Python decodes such names to."""
    line = json.dumps(obj, ensure_ascii=False)
    try:  # checked here, strictly, in the stream's encoding: under a C locale its errors are "surrogateescape",
        line.encode(getattr(stream, "encoding", None) or "utf-8")  # which wrote raw bytes back (not UTF-8 JSON)
    except (UnicodeEncodeError, LookupError):
        line = json.dumps(obj, ensure_ascii=True)  # \udcxx escapes: valid JSON, every byte named
    write(stream, line + "\n")


def error_json(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def not_opened(error: Exception) -> int:
    """Says why the database or a key could not be opened (a ValueError: a key that cannot be made) and returns the
    usage exit status."""
    emit(error_json(getattr(error, "code", "bad_configuration"), str(error)), sys.stdout)
    return EXIT_USAGE


def progress(items: Sequence[Any], description: str = "") -> Iterator[Any]:
    from tqdm import tqdm

    return iter(tqdm(items, desc=description, file=sys.stderr, disable=len(items) < 20, leave=False))


def unwritable(folder: Path, what: str) -> dict[str, Any] | None:
    """The error line for an output ``folder`` that cannot be made or written in (None: it can), checked before
    anything is analysed or saved: a folder that existed read-only let a batch save its first results and then
    stop on its first file, unreported."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        why = (error.strerror or type(error).__name__).lower()
        return error_json("unwritable", f"The {what} {folder} cannot be written in ({why}).")
    return None


def write_new(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write ``data`` to a new file ``<stem><suffix>`` in ``folder`` (``<stem>-2<suffix>``... when that exists):
    never over another file, this run's or an earlier one's, and never through a link planted in a shared folder."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for k in range(1, 10_000):
        target = folder / (f"{stem}{suffix}" if k == 1 else f"{stem}-{k}{suffix}")
        try:
            descriptor = os.open(target, flags, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return target
    raise FileExistsError(f"no free name for {stem}{suffix} in the output folder")


def stdin_secret(confirm: bool = False) -> str:
    """One line of standard input as a password: its line ending removed, a Windows one too (a trailing carriage
    return made a password typed in a Windows-edited file one nobody could type at the sign-in form). Typed at a
    terminal it is asked for without echo (it was shown on the screen as it was typed), twice when ``confirm`` (a
    new account's password mistyped once, unseen, locked its owner out); without standard input at all it is a
    ValueError that says so."""
    if sys.stdin is None or sys.stdin.closed:
        raise ValueError("There is no standard input to read the password from: pipe it in (echo '...' |).")
    if sys.stdin.isatty():
        import getpass

        line = getpass.getpass("Password (not shown): ")
        if confirm and getpass.getpass("The same password again: ") != line:
            raise ValueError("The two passwords typed differ; nothing was changed.")
    else:
        line = sys.stdin.readline(MAX_PASSWORD + 2)  # a bounded read: `< /dev/zero` read until memory ran out
        if not line:  # nothing at all (`< /dev/null`): it read "a password has at least 12 characters"
            raise ValueError("There is no password on standard input: pipe one line in (echo '...' |).")
        line = line.rstrip("\r\n")
        if len(line) > MAX_PASSWORD:
            raise ValueError(
                f"The line on standard input is longer than a password may be ({MAX_PASSWORD:,} characters)"
            )
    try:
        line.encode("utf-8")  # bytes that are not UTF-8 reach Python as lone surrogates: refused by name
    except UnicodeEncodeError:
        raise ValueError("The password on standard input is not UTF-8 text; give it as UTF-8.") from None
    return line


def utf8_text(text: str) -> str:
    """An argparse type: text that is UTF-8 (bytes that are not reach Python as lone surrogates, and an account name
    or filter so given failed later with Python's own encoding error as its message)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not UTF-8 text; give it as UTF-8") from None
    return text


def folder(text: str) -> str:
    """An argparse type: a folder that exists (``--data /nonexistent`` was answered about a split file or the first
    training file, never about the folder given)."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {text}")
    return text


def positive_int(text: str) -> int:
    """An argparse type: a whole number from 1 to 36,500 (a bad one is a usage error, not a traceback later)."""
    return whole(1, 36_500)(text)


def seconds(text: str) -> float:
    """An argparse type: a number of seconds from 1 to 86,400 (a negative one failed after a whole pass had run, 0
    polled in a tight loop, ``inf`` overflowed)."""
    return _between(text, 1.0, 86_400.0)


def dicom_uid(text: str) -> str:
    """An argparse type: a DICOM UID (digits and dots, at most 64 characters): a malformed one was sent to the PACS
    and its refusal read as the PACS's fault."""
    if len(text) > 64 or not re.fullmatch(r"[0-9]+(\.[0-9]+)+", text):
        raise argparse.ArgumentTypeError("not a DICOM UID (digits and dots, at most 64 characters)")
    return text


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (``--epochs -1`` or ``--size 0`` failed deep in
    training, or trained nothing)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low} to {high}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number above 0 (minutes, a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def share(text: str) -> float:
    """An argparse type: a number from 0 to 1 (a share of draws, a probability)."""
    return _between(text, 0.0, 1.0)


def degrees(text: str) -> float:
    """An argparse type: an angle from 0 to 180 degrees."""
    return _between(text, 0.0, 180.0)


def weight(text: str) -> float:
    """An argparse type: a finite number from 0 up."""
    return _between(text, 0.0, math.inf)


def _between(text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(value) or math.isinf(value) or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} is outside {low:g} to {high:g}")
    return value
