"""Deployment settings: hardened Streamlit config, no tracked secrets, pinned requirements."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from core.imaging import DEFAULT_LIMITS

ROOT = Path(__file__).resolve().parents[1]


def test_streamlit_config_is_hardened() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["client"]["toolbarMode"] == "viewer"
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


def test_core_never_imports_streamlit() -> None:
    for path in (ROOT / "core").glob("*.py"):
        text = path.read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, path.name
