"""The model card: the JSON file next to a weights file (``models/<name>.json``) that says how to use it.

It names the labels, the input (:class:`core.model.preprocess.InputSpec`), the output kind, the calibration
temperature, the decision rule (:class:`core.model.decision.DecisionRule`) and the series rule
(:class:`core.model.decision.SeriesRule`), the input gate's policy, the layer heat maps come from, the weights'
SHA-256 and the figures measured on validation data. Two output kinds are supported:
- ``"logits"`` or ``"softmax"``: one unit per label (the project's 4-class model);
- ``"sigmoid"``: one unit giving P(labels[1]), like the Flask app's ``braintumor.h5`` (labels
  ``["notumor", "tumour"]``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ModelError
from core.model.decision import NEGATIVE_LABEL, DecisionRule, SeriesRule
from core.model.preprocess import InputSpec

OUTPUT_KINDS = ("logits", "softmax", "sigmoid")


@dataclass(frozen=True)
class ModelCard:
    """A parsed, validated card; ``path`` is where it was read from."""

    name: str
    version: str
    labels: tuple[str, ...]
    input: InputSpec
    output: str
    weights_file: str
    weights_sha256: str
    negative_label: str = NEGATIVE_LABEL
    temperature: float = 1.0
    logit_bias: Mapping[str, float] = field(default_factory=dict)  # added to logits / T, per label
    rule: DecisionRule = field(default_factory=DecisionRule)
    series: SeriesRule = field(default_factory=SeriesRule)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    gate: Mapping[str, Any] = field(default_factory=dict)
    explain_layer: str | None = None  # the layer Grad-CAM is taken from (None: the last feature map)
    path: Path | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        """Parse and validate a card; raises :class:`ModelError` naming what is wrong."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise ModelError(f"Model card not found: {path}.") from error
        except IsADirectoryError as error:
            raise ModelError(f"Model card {path.name} is a folder; give the card's JSON file.") from error
        except OSError as error:
            raise ModelError(
                f"Model card {path.name} cannot be read ({error.strerror or type(error).__name__})."
            ) from error
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # nested past Python's depth
            raise ModelError(f"Model card {path.name} is not valid JSON.") from error
        try:
            spec = raw["input"]
            calibration = raw.get("calibration") or {}  # absent or null: none fitted
            labels = tuple(str(label) for label in raw["labels"])
            negative = str(raw.get("negative_label", NEGATIVE_LABEL))
            card = cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                labels=labels,
                input=InputSpec(
                    size=int(spec["size"]),
                    channels=int(spec.get("channels", 1)),
                    crop=bool(spec.get("crop", True)),
                    scaling=str(spec["scaling"]),  # no default: a wrong guess would feed the network other pixels
                    mirror=bool(spec.get("mirror", False)),
                ),
                output=str(raw["output"]),
                weights_file=str(raw["weights"]["file"]),
                weights_sha256=str(raw["weights"]["sha256"]).lower(),
                negative_label=negative,
                temperature=float(calibration.get("temperature", 1.0)),
                logit_bias={str(k): float(v) for k, v in (calibration.get("logit_bias") or {}).items()},
                rule=DecisionRule.from_card(raw, labels, negative),
                series=SeriesRule.from_card(raw.get("series")),
                metrics=raw.get("metrics", {}),
                gate=raw.get("gate", {}),
                explain_layer=str(raw["explain"]["layer"]) if raw.get("explain") else None,
                path=path,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ModelError(f"Model card {path.name} is incomplete or malformed ({error!r}).") from error
        card.validate()
        return card

    def validate(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ModelError(f"Model card {self.name}: output must be one of {OUTPUT_KINDS}, not {self.output!r}.")
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ModelError(f"Model card {self.name}: labels must be two or more distinct names.")
        if self.output == "sigmoid" and len(self.labels) != 2:
            raise ModelError(f"Model card {self.name}: a sigmoid model has exactly two labels.")
        if self.negative_label not in self.labels:
            raise ModelError(f"Model card {self.name}: negative label {self.negative_label!r} is not a label.")
        if self.negative_label != NEGATIVE_LABEL:
            raise ModelError(
                f"Model card {self.name}: the negative label must be {NEGATIVE_LABEL!r} (the name results, reviews and "
                f"statistics count as no tumour), not {self.negative_label!r}."
            )
        if not self.temperature > 0:
            raise ModelError(f"Model card {self.name}: calibration temperature must be positive.")
        if set(self.logit_bias) - set(self.labels) or (self.logit_bias and self.output == "sigmoid"):
            raise ModelError(f"Model card {self.name}: a logit bias names labels of a softmax or logits model.")

    @property
    def weights_path(self) -> Path:
        base = self.path.parent if self.path is not None else Path(".")
        return base / self.weights_file


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
