"""Where things live. Read from the environment when called, never at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = PROJECT_ROOT / "models"
DEFAULT_MODEL_NAME = "btd-ensemble"


def model_card_path() -> Path:
    """The card of the model to serve: ``BTD_MODEL`` (a card path) or the shipped ``models/btd-ensemble.json``."""
    configured = os.environ.get("BTD_MODEL")
    return Path(configured) if configured else MODELS_DIR / f"{DEFAULT_MODEL_NAME}.json"


def lesion_card_path() -> Path | None:
    """The lesion segmenter's card: ``BTD_LESION_MODEL`` (a card path; "none" turns lesions off) or the shipped
    ``models/btd-lesion.json``."""
    configured = os.environ.get("BTD_LESION_MODEL")
    if configured and configured.strip().lower() == "none":
        return None
    return Path(configured) if configured else MODELS_DIR / "btd-lesion.json"


def data_dir() -> Path:
    """Where the embedded database and the local patient-reference key live: ``BTD_DATA_DIR`` or ``data/``."""
    return Path(os.environ.get("BTD_DATA_DIR") or PROJECT_ROOT / "data")


DEFAULT_SECRETS = PROJECT_ROOT / ".streamlit" / "secrets.toml"


def missing_secrets(path: Path) -> str | None:
    """Why a secrets file named in the configuration (``BTD_SECRETS``, the app's ``secrets.files``) cannot be used
    because it is not there, or None. Only the project's own may be absent (no secrets: the embedded database and
    local keys); a mistyped name ran the commands and the app on a new embedded database with new keys, without a
    word, instead of the configured MongoDB. The path as both readers take it: "~" is not expanded (Streamlit does
    not, and a service's environment file passes it as written)."""
    try:
        if path.exists() or path.resolve() == DEFAULT_SECRETS.resolve():
            return None
    except OSError as error:  # a folder on the way this account may not enter: said, not an unexpected error
        return f"the secrets file {path} named in the configuration cannot be read ({error.strerror})"
    where = "" if path.is_absolute() else f" (from the folder {Path.cwd()})"
    return f"the secrets file {path}{where} named in the configuration (BTD_SECRETS, secrets.files) does not exist"


def file_secrets() -> dict[str, Any]:
    """The app's secrets file (``BTD_SECRETS``, else the project's ``.streamlit/secrets.toml``) for the command
    line, which Streamlit does not configure: the same database, keys and PACS as the app serves (the commands
    used the environment only, so a deployment configured in the file had its watch and back-fills write to
    another database, with other keys). Empty when there is none; a file that cannot be read is refused."""
    import tomllib

    path = Path(os.environ.get("BTD_SECRETS") or DEFAULT_SECRETS)
    if problem := missing_secrets(path):
        raise ConfigError(problem)
    try:
        secrets = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"the secrets file {path} cannot be read ({type(error).__name__})") from error
    if mistake := secrets_mistake(secrets):
        raise ConfigError(f"{mistake}: {path}")
    warn_if_readable(path)
    return secrets


_WARNED: set[tuple[Path, int]] = set()


def warn_if_readable(path: Path) -> None:
    """Log a warning when other accounts may read the secrets file (0644 as copied under a usual umask): it holds
    the database's password and the patient-reference and audit keys, where every data file is 0600. Warned, not
    refused: a mounted secret is often shown so whatever the secret store keeps."""
    import logging
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if path.is_file() and mode & (stat.S_IRWXG | stat.S_IRWXO) and (path, mode) not in _WARNED:
        _WARNED.add((path, mode))  # once per file and mode in a process (a command reads the file several times)
        logging.getLogger("btd.config").warning(
            "event=secrets_readable mode=%s hint=chmod 600 the secrets file (other accounts may read its keys)",
            oct(stat.S_IMODE(mode)),
        )


# the settings each section of the secrets file may hold ([auth] is Streamlit's own, and checked by it)
SECRET_KEYS = {
    "mongo": {"uri"},
    "audit": {"key"},
    "identity": {"hmac_key"},
    "pacs": {"url", "user", "password", "verify_tls", "ca_file"},
}


def secrets_mistake(secrets: Mapping[str, Any]) -> str | None:
    """Why the secrets cannot be used as written, or None: a section written as a single value, or a setting its
    section does not have (``[mongo] url`` for ``uri`` opened the embedded database instead, without a word), or a
    section or setting it does not know (``[mongodb]``, a top-level ``MONGODB_URI``: read by nothing)."""
    unknown_sections = sorted(set(secrets) - set(SECRET_KEYS) - {"auth"})
    if unknown_sections:
        return (
            f"the secrets file has no section or setting {', '.join(unknown_sections)} (it takes "
            f"{', '.join(f'[{name}]' for name in (*SECRET_KEYS, 'auth'))})"
        )
    for section, known in SECRET_KEYS.items():
        values = secrets.get(section)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            return f"[{section}] in the secrets file is a single value, not a section of settings"
        unknown = sorted(set(values) - known)
        if unknown:
            return (
                f"[{section}] in the secrets file has no setting {', '.join(unknown)} (it takes "
                f"{', '.join(sorted(known))})"
            )
        for name, value in values.items():  # `key = 5` was an internal error naming nothing
            wanted = bool if name == "verify_tls" else str
            if not isinstance(value, wanted):
                kind = "true or false" if wanted is bool else "text in quotes"
                return f"[{section}] {name} in the secrets file is not {kind}"
    return None


def authlib_installed() -> bool:
    """Whether Authlib, which Streamlit's ``st.login`` needs, is installed (it is not a pinned requirement)."""
    import importlib.util

    return importlib.util.find_spec("authlib") is not None


def sso_refusal(secrets: Mapping[str, Any]) -> str | None:
    """Why the ``[auth]`` (single sign-on) settings cannot be used, None when they can or there are none. The
    sign-in page and the account rules ask this one question: an admin without a password counted as one who could
    sign in while the page kept single sign-on off, and the last admin with a password could be disabled. Streamlit
    signs its identity cookie with ``cookie_secret``: the example's placeholder (or a short one) would let anyone
    forge a signed-in identity and its groups."""
    if not secrets.get("auth"):
        return None
    secret = str((secrets.get("auth") or {}).get("cookie_secret") or "")
    if len(secret) < 32 or secret.upper().startswith("REPLACE"):
        return (
            "Single sign-on is configured without a cookie secret of its own (at least 32 random characters in "
            "[auth] cookie_secret): it is off until an administrator sets one."
        )
    if not authlib_installed():
        return "Single sign-on is configured but the server lacks Authlib (pip install Authlib): it is off."
    return None


def mongodb_uri(secrets: Mapping[str, Any]) -> str | None:
    """``MONGODB_URI`` from the environment, else ``[mongo] uri`` from the Streamlit secrets; None = embedded."""
    return os.environ.get("MONGODB_URI") or (secrets.get("mongo") or {}).get("uri") or None


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is: its DICOMweb root, the user and password, whether TLS certificates are verified, and
    against which certificate authorities (``ca_file``, a PEM bundle: a hospital's own; None, certifi's bundle, not
    the system's store)."""

    url: str
    user: str | None = None
    password: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None

    @property
    def verify(self) -> bool | str:
        """What requests verifies the PACS's certificate with (False: not at all)."""
        return (self.ca_file or True) if self.verify_tls else False

    @property
    def unencrypted(self) -> bool:
        """Whether what is sent to and from the PACS crosses the network in clear: a plain-http address of another
        machine (its images, patients' names and, with a user, the password on every request; the loopback, a local
        Orthanc or a tunnel's end, does not leave the machine)."""
        from ipaddress import ip_address
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(self.url.strip())
        except ValueError:  # not an address (a bracket left open): refused as such where it is connected to
            return False
        host = parts.hostname or ""
        if parts.scheme.lower() != "http" or host == "localhost" or host.endswith(".localhost"):
            return False
        try:
            return not ip_address(host).is_loopback
        except ValueError:  # a name: a machine elsewhere, as far as the address says
            return True


def pacs_settings(secrets: Mapping[str, Any]) -> PacsSettings | None:
    """``BTD_PACS_URL`` / ``BTD_PACS_USER`` / ``BTD_PACS_PASSWORD`` from the environment, else the ``[pacs]`` section
    of the Streamlit secrets (``url``, ``user``, ``password``, ``verify_tls``, true unless set false, ``ca_file``, or
    ``BTD_PACS_CA_FILE``); None when no PACS is configured."""
    section = secrets.get("pacs") or {}
    url = os.environ.get("BTD_PACS_URL") or section.get("url")
    if not url:
        return None
    return PacsSettings(
        url=str(url),
        user=os.environ.get("BTD_PACS_USER") or section.get("user"),
        password=os.environ.get("BTD_PACS_PASSWORD") or section.get("password"),
        verify_tls=bool(section.get("verify_tls", True)),
        ca_file=pacs_ca_file(secrets),
    )


def pacs_ca_file(secrets: Mapping[str, Any]) -> str | None:
    """The PEM file of the certificate authorities the PACS's certificate is verified against: ``BTD_PACS_CA_FILE``
    or ``[pacs] ca_file``, whatever gives the address (the command line's ``--url`` too); None: certifi's bundle (not
    the system's store)."""
    return os.environ.get("BTD_PACS_CA_FILE") or (secrets.get("pacs") or {}).get("ca_file") or None


def _key(configured: str | None, what: str, shared_database: bool, local_file: str) -> bytes | None:
    """A configured HMAC key (hex or text, at least 16 bytes); else, with the embedded database, a local random one
    in the data directory (created 0600 on first use); else None."""
    from core.identity import local_key

    if configured:
        if configured.strip().upper().startswith(("REPLACE", "<")):  # a placeholder (the example's, the printed
            # first-admin command's "<the server's audit key>") is a publicly known key
            raise ConfigError(f"the configured {what} is the example's placeholder; set a random one")
        try:
            key = bytes.fromhex(configured)
        except ValueError:
            key = configured.encode("utf-8")
        if len(key) < 16:
            raise ConfigError(f"the configured {what} is shorter than 16 bytes")
        return key
    if shared_database:
        return None
    folder = data_dir()
    if not (folder / local_file).exists():  # about to create one: not beside a database known to have vanished
        from core.storage import DATABASE_FILE, holds_keyed_data, stamps

        try:
            stamps.check(folder / DATABASE_FILE)
        except stamps.StoreVanished as error:  # a new key would silently stick once the backup is restored
            raise ConfigError(f"the {what} is gone with the results database; restore the data folder") from error
        # never a new key beside a database nobody could check: its error (a corrupt file) as the store's own, which
        # every page and command names as such (wrapped, it read as a configuration mistake)
        keyed = holds_keyed_data(folder / DATABASE_FILE, local_file)
        if keyed:  # the database restored without its key file
            raise ConfigError(
                f"the {what} file {local_file} is missing beside a results database made with it; restore it from "
                "the same backup (a new key would read the audit trail as tampered with, or lose every patient's "
                "History)"
            )
    return local_key(folder, local_file)


def patient_key(secrets: Mapping[str, Any], shared_database: bool) -> bytes | None:
    """The HMAC key for patient references: ``BTD_HMAC_KEY`` or ``[identity] hmac_key`` (hex or text).

    With the embedded database a local random key is created on first run. With a shared MongoDB every replica
    must use the same configured key; None means none is configured and patient references are disabled.
    """
    from core.identity import KEY_FILE

    configured = os.environ.get("BTD_HMAC_KEY") or (secrets.get("identity") or {}).get("hmac_key")
    return _key(configured, "patient-reference key", shared_database, KEY_FILE)


def audit_key(secrets: Mapping[str, Any], shared_database: bool) -> bytes | None:
    """The HMAC key of the audit chain: ``BTD_AUDIT_KEY`` or ``[audit] key`` (hex or text, 16 bytes or more),
    kept apart from the database so that whoever can edit the events cannot re-hash them. The embedded database
    gets a local random key file (``audit.key`` beside ``patient-ref.key`` and the database itself, 0600: whoever
    can edit the database file can read it too, a stated limit) on first use; a shared MongoDB
    needs a configured one (None: the chain is hashed without a key, and ``audit verify`` says so)."""
    configured = os.environ.get("BTD_AUDIT_KEY") or (secrets.get("audit") or {}).get("key")
    return _key(configured, "audit key", shared_database, "audit.key")


def first_admin_command(secrets: Mapping[str, Any]) -> str:
    """The exact shell command that creates the first admin in the database this server uses (run on the server,
    from any folder): the project's interpreter and, when the server runs with one, its data directory; with
    MongoDB, the server's connection string is named but never printed."""
    import shlex

    python = shlex.quote(str(PROJECT_ROOT / ".venv" / "bin" / "python"))
    settings = ""
    for name in ("BTD_DATA_DIR", "BTD_STATE_DIR"):  # the data folder, and the register of databases beside it
        if os.environ.get(name):  # (another register takes a moved data folder for a first start)
            settings += f"{name}={shlex.quote(str(Path(os.environ[name]).resolve()))} "
    if os.environ.get("BTD_SECRETS"):  # the server's secrets file (its audit key, database): never the default
        settings += f"BTD_SECRETS={shlex.quote(str(Path(os.environ['BTD_SECRETS']).resolve()))} "
    if mongodb_uri(secrets):
        settings += 'MONGODB_URI="<the server\'s MongoDB URI>" '
    for name, what in (("BTD_AUDIT_KEY", "audit key"), ("BTD_HMAC_KEY", "patient key")):
        if os.environ.get(name):  # named, never printed: an event under another key reads as tampering for good
            settings += f'{name}="<the server\'s {what}>" '
    # no password in it: the page shows it to every visitor while no account exists, and the one it printed was
    # anybody's to sign in with first (asked for at the terminal instead, twice, not shown nor kept in its history)
    folder = shlex.quote(str(PROJECT_ROOT))
    return f"cd {folder} && {settings}{python} -m core users add admin --role admin --password-stdin"
