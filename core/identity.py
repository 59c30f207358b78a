"""Pseudonymous patient references: a keyed HMAC-SHA256 of what the user typed, never the text or a plain hash;
and scan days moved by a keyed offset (:func:`scan_day`), which keep the days between a patient's scans only.

The key comes from configuration (``BTD_HMAC_KEY`` or ``[identity] hmac_key`` in secrets). For the embedded
single-machine mode, :func:`local_key` creates a random key file in the data directory on first use (mode 0600);
losing it means new references no longer match old ones, so back it up with the database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import unicodedata
from datetime import date
from pathlib import Path

from core.errors import ConfigError

KEY_FILE = "patient-ref.key"


def normalise(text: str) -> str:
    """Case, surrounding and repeated whitespace do not change the reference, nor how the text was typed: composed
    or decomposed accents, full-width digits (NFKC), invisible format characters (a zero-width space pasted with an
    ID) and the kind of dash. ASCII text reads as before; a reference typed with any of those now finds the
    same patient (it split one patient in two: History found no priors)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        "-" if unicodedata.category(c) == "Pd" or c == "\N{MINUS SIGN}" else c
        for c in text
        if unicodedata.category(c) != "Cf"
    )
    return " ".join(text.split()).casefold()


def pseudonymise(text: str | None, key: bytes | None) -> str | None:
    """HMAC-SHA256 hex of the normalised text, or None when nothing was typed or there is no key (none kept)."""
    if text is None or not normalise(text) or key is None:
        return None
    if len(key) < 16:
        raise ValueError("the patient-reference key must be at least 16 bytes")
    return hmac.new(key, normalise(text).encode("utf-8"), hashlib.sha256).hexdigest()


def fingerprint(key: bytes) -> str:
    """What a database keeps to know the key its patient references were made with (the key cannot be recovered
    from it): another installation's key file, restored with a backup, filed every new result apart from the
    patient's History."""
    return hmac.new(key, b"btd patient-reference key check", hashlib.sha256).hexdigest()[:32]


SHIFT_DAYS = 3653  # scan days are moved back by 1 to 3,653 days (about ten years), the same for every scan


def scan_day(day: date | None, key: bytes) -> int | None:
    """A scan's day as kept: days since 1970-01-01 moved back by an offset derived from the key (DICOM PS3.15's
    "modified dates" kept longitudinal: the days between two scans hold). One offset for the whole installation,
    so that a patient reference typed or corrected later needs no re-dating. It keeps the date out of sight, not
    out of reach: every record keeps its save time, and a series saved on the day it was scanned gives the offset
    away to whoever holds the database (the save times already told when most studies were scanned; the prior
    studies' dates are what this adds). None without a day."""
    if day is None:
        return None
    offset = 1 + int.from_bytes(hmac.new(key, b"btd scan-day shift", hashlib.sha256).digest()[:4], "big") % SHIFT_DAYS
    return (day - date(1970, 1, 1)).days - offset


def local_key(data_dir: Path, name: str = KEY_FILE) -> bytes:
    """Read the embedded-mode key ``name`` from ``data_dir``, creating a random one on first use. A key file that
    cannot be read or created (permissions, a read-only disk) is a ValueError, which every caller reports as an
    unusable key (it was a PermissionError that crashed every page, the sign-in page too)."""
    if data_dir.exists() and not data_dir.is_dir():  # it read "cannot be read or created (File exists)"
        raise ConfigError(f"the data folder (BTD_DATA_DIR) is a file, not a folder: the key file {name} cannot be made")
    try:
        return _local_key(data_dir, name)
    except OSError as error:
        raise ConfigError(f"the key file {name} cannot be read or created ({error.strerror or error})") from error


def _local_key(data_dir: Path, name: str) -> bytes:
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = data_dir / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(draft, path)  # atomic, and never replaces a key another process published first
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    try:  # "non-hexadecimal number found in fromhex() arg at position 0" named no file
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(f"the key file {name} does not hold a valid key; restore it from a backup")
    return key
