from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run the tiny test models; a test that wants a lesion segmenter names one (the tiny card, or the shipped
# one in the model-quality checks), so the shipped segmenter's presence changes no other test.
os.environ.setdefault("BTD_LESION_MODEL", "none")

from tests.scans import write_model_card

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-mri"


@pytest.fixture(autouse=True, scope="session")
def state_register(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The register of known databases (core.storage.stamps) in a test folder, never the user's own."""
    os.environ["BTD_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    # the command line reads the app's secrets file: never a developer's own in the tests (a test names one)
    # (an empty one: a secrets file named but not there is refused)
    secrets = tmp_path_factory.mktemp("secrets") / "secrets.toml"
    secrets.touch(mode=0o600)
    os.environ["BTD_SECRETS"] = str(secrets)


@pytest.fixture(autouse=True)
def quick_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused sign-in waits a second in the app (its timing tells nothing); not in the tests, but the one that
    proves it (the browser tests' app waits the full second)."""
    monkeypatch.setattr("core.services.accounts.REFUSAL_SECONDS", 0.0)


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class logits model with its card, built once per test session."""
    return write_model_card(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_card: Path):
    from core.model.classifier import Classifier

    return Classifier.from_card(tiny_card)


@pytest.fixture(scope="session")
def tiny_lesion_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained U-Net with its lesion card (threshold 1e-9: every pixel of the brain box is "lesion", so
    tests know what it marks), built once per test session."""
    import json

    from core.model.card import sha256_file
    from core.training.segment import build_unet

    folder = tmp_path_factory.mktemp("lesion")
    build_unet(32, 4).save(folder / "lesion.keras")
    card = {
        "name": "tiny-lesion",
        "version": "0.0.1",
        "weights": {"file": "lesion.keras", "sha256": sha256_file(folder / "lesion.keras")},
        "input": {"size": 32},
        "threshold": 1e-9,
    }
    (folder / "lesion.json").write_text(json.dumps(card))
    return folder / "lesion.json"
