"""Deployment settings: hardened Streamlit config, no tracked secrets, pinned requirements."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from core.imaging import DEFAULT_LIMITS

ROOT = Path(__file__).resolve().parents[1]


def test_streamlit_config_is_hardened() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["client"]["toolbarMode"] == "viewer"
    assert config["client"]["disableDataExport"] is True  # tables' own CSV download: unaudited, formulas live
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["enableCORS"] is True
    assert config["server"]["enableStaticServing"] is False
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["maxUploadSize"] * 2**20 == DEFAULT_LIMITS.max_bytes  # app and CLI agree


def test_no_secrets_file_is_tracked() -> None:
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.splitlines()
    assert not [path for path in tracked if path.endswith("secrets.toml")]
    assert ".streamlit/secrets.toml" in (ROOT / ".gitignore").read_text()


def test_requirements_are_pinned() -> None:
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert "==" in line, f"{name}: {line} is not pinned"


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            package, version = line.split("==")
            pins[package.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_constraints_pin_every_requirement_at_its_version_and_every_transitive_package() -> None:
    constraints = _pins("constraints.txt")
    for name in ("requirements.txt", "requirements-dev.txt"):
        for package, version in _pins(name).items():
            assert constraints.get(package) == version, (
                f"{name}: {package}=={version} but constraints.txt says {constraints.get(package)}"
            )
    # the transitive packages that move most often and broke installs elsewhere are pinned too
    for package in ("pip", "protobuf", "pyarrow", "starlette", "jinja2"):
        assert package in constraints, package
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.count("-c constraints.txt") == 3, "every pip install in the Makefile runs under the constraints"


def test_core_never_imports_streamlit() -> None:
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, path.name


def test_the_app_listens_on_loopback_and_accepts_only_listed_hosts() -> None:
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "127.0.0.1"
    assert set(server["allowedHosts"]) == {"localhost", "127.0.0.1"}


def test_the_reverse_proxy_example_sets_tls_and_the_security_headers() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for needle in (
        "listen 443 ssl",
        "Strict-Transport-Security",
        "Content-Security-Policy",
        "frame-ancestors 'none'",
        "X-Content-Type-Options",
        "proxy_pass http://127.0.0.1:8501",
        "Upgrade $http_upgrade",
        "limit_conn per_address",  # a flood of tabs from one address (each sign-in a 64 MiB check)
    ):
        assert needle in conf, needle


def test_the_secrets_example_holds_no_real_values() -> None:
    text = (ROOT / ".streamlit" / "secrets.toml.example").read_text()
    example = tomllib.loads(text)
    # copied as it says, it keeps the embedded database and a local random key: the placeholders are comments
    assert not example.get("mongo") and not example.get("identity")
    assert '# hmac_key = "REPLACE' in text and "PASSWORD@" in text and "[auth]" in text
    import os

    import pytest

    from core.config import mongodb_uri, patient_key

    assert os.environ.get("MONGODB_URI") or mongodb_uri(example) is None
    with pytest.raises(ValueError, match="placeholder"):
        patient_key({"identity": {"hmac_key": "REPLACE_WITH_64_HEX_CHARACTERS"}}, shared_database=True)
    assert all(
        line.split("=", 1)[1].strip().strip('"').startswith(("REPLACE", "https://", "groups"))
        for line in text.splitlines()
        if line.startswith("# ") and "=" in line and "secret" in line
    )


def test_data_files_are_created_private(tmp_path) -> None:
    import os

    from core.identity import local_key
    from core.storage.images import FolderImages
    from core.storage.sqlite import SQLiteStore

    data = tmp_path / "data"  # made by the store: its folders too are its owner's alone (0755 let any account list
    SQLiteStore(data / "results.sqlite3")  # the image store's names and times: how many uploads, and when)
    local_key(data)
    FolderImages(data / "images").put(__import__("numpy").zeros((64, 64), "uint8"))
    files = [data / "results.sqlite3", data / "patient-ref.key", *(data / "images").glob("??/??/*.png")]
    assert len(files) == 3 and all(oct(path.stat().st_mode)[-3:] == "600" for path in files)
    previous = os.umask(0o022)  # the usual one: the folders' mode is the code's, not a strict umask's
    try:
        from core.cli.common import write_new

        SQLiteStore(tmp_path / "other" / "results.sqlite3")
        written = write_new(tmp_path / "masks", "scan", ".png", b"x")
    finally:
        os.umask(previous)
    folders = [data, data / "images", tmp_path / "other", written.parent]
    assert all(oct(folder.stat().st_mode)[-3:] == "700" for folder in folders)


def test_the_command_line_reads_the_apps_secrets_file(tmp_path: Path, monkeypatch) -> None:
    """The commands read the environment only: a deployment configured in secrets.toml had its PACS watch write to
    another database with another patient key."""
    import pytest

    from core.config import file_secrets, pacs_settings, patient_key

    path = tmp_path / "secrets.toml"
    monkeypatch.setenv("BTD_SECRETS", str(path))
    monkeypatch.delenv("BTD_HMAC_KEY", raising=False)
    monkeypatch.delenv("BTD_PACS_URL", raising=False)
    path.write_text("")
    assert file_secrets() == {}
    path.write_text('[identity]\nhmac_key = "' + "ab" * 32 + '"\n[pacs]\nurl = "http://pacs.example/dicom-web"\n')
    assert patient_key(file_secrets(), shared_database=True) == bytes.fromhex("ab" * 32)
    assert pacs_settings(file_secrets()).url == "http://pacs.example/dicom-web"
    path.write_text("[identity\n")
    with pytest.raises(ValueError, match="cannot be read"):
        file_secrets()


def test_a_secrets_file_named_but_not_there_is_refused_not_read_as_none(tmp_path: Path, monkeypatch) -> None:
    """``BTD_SECRETS`` mistyped ran the commands on a new embedded database with new keys, rc 0, instead of the
    configured MongoDB; only the project's own file may be absent (no secrets configured)."""
    import pytest

    from core.config import DEFAULT_SECRETS, file_secrets, missing_secrets

    monkeypatch.setenv("BTD_SECRETS", str(tmp_path / "secret.toml"))
    with pytest.raises(ValueError, match=r"secret\.toml named in the configuration \(BTD_SECRETS.*does not exist"):
        file_secrets()
    monkeypatch.setenv("BTD_SECRETS", "")  # set but empty: unset, as make run reads it
    assert missing_secrets(DEFAULT_SECRETS) is None and missing_secrets(tmp_path) is None  # a folder of them
    assert "does not exist" in missing_secrets(tmp_path / "secret.toml")
    # "~" as written (a service's environment file passes it so, and Streamlit reads it so): not there either
    assert "does not exist" in missing_secrets(Path("~/no-such-folder/secrets.toml"))
    assert "(from the folder " in missing_secrets(Path("relative/secrets.toml"))  # where it was looked for


def test_a_secrets_file_other_accounts_may_read_is_logged(tmp_path: Path, monkeypatch, caplog) -> None:
    """Copied from the example under a usual umask it was 0644, holding the database's password and both keys, and
    nothing said so."""
    import logging

    from core.config import file_secrets

    path = tmp_path / "secrets.toml"
    path.write_text('[identity]\nhmac_key = "' + "ab" * 32 + '"\n')
    monkeypatch.setenv("BTD_SECRETS", str(path))
    for mode, logged in ((0o644, True), (0o600, False)):
        path.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="btd.config"):
            file_secrets()
        said = [r.getMessage() for r in caplog.records if "event=secrets_readable" in r.getMessage()]
        assert bool(said) == logged and (not said or "mode=0o644" in said[0]), mode


def test_the_app_reads_the_one_secrets_file_the_command_line_reads() -> None:
    """Streamlit also merged ~/.streamlit/secrets.toml, which the command line never reads: a key kept there gave
    the app and the PACS watch two patient keys (History never matched), or two databases."""
    import subprocess
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["secrets"]["files"] == [".streamlit/secrets.toml"]  # the project's, as core.config.file_secrets

    def started(*settings: str) -> str:  # the command make run would start (inside make test too: make[1] lines)
        shown = subprocess.run(["make", "-n", "run", *settings], cwd=ROOT, capture_output=True, text=True).stdout
        (line,) = [line for line in shown.splitlines() if "streamlit run" in line]
        return line

    assert '--secrets.files "/etc/btd/secrets.toml"' in started("BTD_SECRETS=/etc/btd/secrets.toml")
    assert "--secrets.files" not in started("BTD_SECRETS=")


def test_the_first_admin_command_names_the_servers_keys_and_prints_no_password(monkeypatch) -> None:
    """Run without the server's BTD_AUDIT_KEY the command wrote its event under the data folder's own key (the trail
    then read as tampered with); and the password it printed, shown to every visitor, was anybody's to use first."""
    import shlex

    from core.config import first_admin_command

    monkeypatch.setenv("BTD_AUDIT_KEY", "a" * 64)
    monkeypatch.setenv("BTD_HMAC_KEY", "b" * 64)
    monkeypatch.setenv("BTD_STATE_DIR", "/srv/btd/state")  # the server's register, or the check of a vanished
    assert "BTD_STATE_DIR=/srv/btd/state " in first_admin_command({})  # database is made against another one
    monkeypatch.delenv("BTD_STATE_DIR")
    command = first_admin_command({})
    assert 'BTD_AUDIT_KEY="<the server\'s audit key>"' in command and "a" * 64 not in command
    assert 'BTD_HMAC_KEY="<the server\'s patient key>"' in command and "b" * 64 not in command
    assert command.endswith("--role admin --password-stdin") and "echo" not in command  # typed, not printed
    shlex.split(command)  # quoted as a shell reads it (an apostrophe inside single quotes left one open)
    import pytest

    from core.config import audit_key

    monkeypatch.setenv("BTD_AUDIT_KEY", "<the server's audit key>")  # run as printed: a publicly known key
    with pytest.raises(ValueError, match="placeholder"):
        audit_key({}, shared_database=False)
    monkeypatch.delenv("BTD_AUDIT_KEY")
    monkeypatch.delenv("BTD_HMAC_KEY")
    assert "BTD_AUDIT_KEY" not in first_admin_command({}) and "BTD_HMAC_KEY" not in first_admin_command({})


def test_a_mistyped_setting_in_the_secrets_file_is_refused_by_name_not_ignored(tmp_path, monkeypatch) -> None:
    """``[mongo] url`` (for ``uri``) saved into the embedded database instead, and ``[audit] hmac_key`` hashed the
    trail with the data folder's key, without a word; ``mongo = "..."`` (no section) crashed every command."""
    import pytest

    from core.config import file_secrets, secrets_mistake

    path = tmp_path / "secrets.toml"
    monkeypatch.setenv("BTD_SECRETS", str(path))
    for text, said in (
        ('[mongo]\nurl = "mongodb://db.example"\n', "[mongo] in the secrets file has no setting url (it takes uri)"),
        ('[audit]\nhmac_key = "' + "ab" * 32 + '"\n', "[audit] in the secrets file has no setting hmac_key"),
        ('mongo = "mongodb://db.example"\n', "[mongo] in the secrets file is a single value"),
        # a setting of the wrong type was an internal error naming nothing ("AttributeError; see the log")
        ("[audit]\nkey = 5\n", "[audit] key in the secrets file is not text in quotes"),
        ('[identity]\nhmac_key = ["a"]\n', "[identity] hmac_key in the secrets file is not text in quotes"),
        ('[pacs]\nverify_tls = "no"\n', "[pacs] verify_tls in the secrets file is not true or false"),
        # a section nothing reads was ignored: the embedded database opened instead of the configured one
        ('[mongodb]\nuri = "mongodb://db.example"\n', "the secrets file has no section or setting mongodb"),
        ('MONGODB_URI = "mongodb://db.example"\n', "no section or setting MONGODB_URI"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(said)):
            file_secrets()
    path.write_text('[mongo]\nuri = "mongodb://db.example"\n[pacs]\nurl = "http://p/dicom-web"\nverify_tls = false\n')
    assert file_secrets()["mongo"]["uri"] == "mongodb://db.example"
    from core.config import pacs_settings  # a hospital's own certificate authority: a setting of its own

    path.write_text('[pacs]\nurl = "https://p/dicom-web"\nca_file = "/etc/ssl/hospital.pem"\n')
    assert pacs_settings(file_secrets()).verify == "/etc/ssl/hospital.pem"
    monkeypatch.setenv("BTD_PACS_CA_FILE", "/srv/ca.pem")
    assert pacs_settings(file_secrets()).verify == "/srv/ca.pem"
    import argparse

    from core.cli.pacs import _settings  # the command line's --url, no address configured: the authority still holds

    path.write_text("")
    given = argparse.Namespace(url="https://p/dicom-web", user=None, password_stdin=False, insecure=False)
    assert pacs_settings(file_secrets()) is None and _settings(given).verify == "/srv/ca.pem"
    assert secrets_mistake({"auth": {"anything": "Streamlit's own"}}) is None


def test_a_pacs_address_is_unencrypted_when_plain_http_leaves_the_machine() -> None:
    """Basic authentication sends the PACS password on every request: over plain http to another machine it, the
    images and the patients' names crossed the network in clear unsaid."""
    from core.config import PacsSettings

    unencrypted = {
        url: PacsSettings(url).unencrypted
        for url in (
            "http://pacs.hospital.example:8042/dicom-web",
            "HTTP://10.1.2.3:8042/dicom-web",
            "http://[2001:db8::1]:8042/dicom-web",
            "https://pacs.hospital.example/dicom-web",
            "http://127.0.0.1:8042/dicom-web",
            "http://127.8.0.1:8042/dicom-web",
            "http://localhost:8042/dicom-web",
            "http://[::1]:8042/dicom-web",
        )
    }
    assert [url for url, clear in unencrypted.items() if clear] == [
        "http://pacs.hospital.example:8042/dicom-web",
        "HTTP://10.1.2.3:8042/dicom-web",
        "http://[2001:db8::1]:8042/dicom-web",
    ]
