"""An ensemble of trained models as one network and one card: ``python -m core ensemble --member A --member B``.

Why: on the validation split, model 3 (a ResNet-18) and the round-2 network err on different scans; the mean of
their calibrated log-probabilities sends fewer calls to review than either (the shipped ensemble: 0.310 against
0.590 and 0.369, ``bench/ensemble.py``) and is ahead of the round-2 network on every source's verdicts.

How: one Keras network with model 3's input (the crop scaled to [0, 1]). Every member's layers are copied into it
flat, so that every stage stays reachable (the gate's ``features`` are the first member's; the others' layers are
named ``member_<i>_<name>``); each other member is fed its own input computed inside the network
(:class:`core.model.layers.PercentileMirror` for a round-2 model). Heat maps are taken, like any network's, from
the last layer of each resolution (:func:`core.model.explain.stage_layers`) in Keras's order of the layers (by
distance from the output, farthest first), which for resolutions both members have is the one nearer the output:
here the round-2 network's, the shallower. That is the wanted one: its maps stay on the brain (its Grad-CAM's heat
is 8.9 times denser inside the brain than outside on 30 validation tumours) where model 3's spread over the crop's
background (1.8; its peak outside the brain on 6 of 30), so the heat map follows the round-2 member and the verdict
the mean; the finished card names the layer it chose (``explain.layer``), so serving does not depend on the order.
Each member's logits pass its own card's calibration (a frozen layer: logits / T + bias) and a log-softmax; the
output is their mean. The card is then finished like any model's (:func:`core.training.finish.finish_card`:
calibration on top, decision rule, gate, series rule, heat-map layer), on the first member's validation split.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.metrics import machine
from core.evaluation.splits import split_file_of
from core.model.card import ModelCard
from core.model.classifier import load_checked_model
from core.model.preprocess import InputSpec
from core.training.card_io import write_card


def _member_input(spec: InputSpec, first: InputSpec, crops: Any) -> Any:
    """The tensor a member takes, computed from the first member's input ``crops``."""
    from core.model.layers import PercentileMirror

    if spec == first:
        return crops
    if (spec.size, spec.crop, spec.scaling, spec.mirror) == (first.size, first.crop, "percentile", True):
        return PercentileMirror()(crops)
    raise ValueError(
        f"a member takes {spec}; an ensemble member takes the first member's input or the round-2 input "
        "(percentile scaling with the mirror channel) of the same crop size"
    )


def _calibrated_log_probabilities(card: ModelCard, logits: Any, name: str) -> Any:
    """A member's logits -> log-softmax(logits / T + bias), its card's calibration, as frozen layers."""
    from keras import layers

    units = len(card.labels)
    calibration = layers.Dense(units, trainable=False, name=f"{name}_calibration")
    values = calibration(logits)
    bias = np.array([card.logit_bias.get(label, 0.0) for label in card.labels], np.float32)
    calibration.set_weights([np.eye(units, dtype=np.float32) / card.temperature, bias])
    return layers.Activation("log_softmax", name=f"{name}_log_probabilities")(values)


def _chained(model: Any, tensor: Any, prefix: str) -> Any:
    """``model``'s layers, copied with their weights and ``prefix`` on their names, called one after another on
    ``tensor``: a member after the first must be one chain of layers from its input layer to its one output (the
    round-2 network is). Anything else is refused rather than copied in part: a ``Sequential`` model does not list
    its input layer, and an operation that is not a layer, or a second output, would be left out silently."""
    import keras

    chain = model.layers
    ends = bool(chain) and isinstance(chain[0], keras.layers.InputLayer) and len(model.outputs) == 1
    if not ends or chain[-1].output is not model.outputs[0]:
        raise ValueError(f"{model.name}: a member after the first must be one chain of layers from input to output")
    previous = chain[0]
    for layer in chain[1:]:
        if layer.input is not previous.output:
            raise ValueError(f"{model.name}: a member after the first must be one chain of layers")
        copy = layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})
        tensor = copy(tensor)
        copy.set_weights(layer.get_weights())
        previous = layer
    return tensor


def build_ensemble(cards: list[ModelCard]) -> Any:
    """The ensemble network of ``cards``, every member's layers flat; see the module."""
    import keras
    from keras import layers

    if len(cards) < 2:
        raise ValueError("an ensemble takes two or more members")
    first = cards[0]
    if first.input.channels != 1 or first.input.scaling != "unit" or not first.input.crop:
        raise ValueError("the first member takes the crop scaled to [0, 1], one channel (model 3's input)")
    for card in cards:
        if card.output != "logits" or list(card.labels) != list(first.labels):  # a softmax's are no logits
            raise ValueError(f"{card.name}: members give one logit per label, the same labels as {first.name}")
    models = [load_checked_model(card.weights_path, card.weights_sha256, card.name) for card in cards]
    crops = keras.Input((first.input.size, first.input.size, 1), name="scan")
    flat = keras.models.clone_model(models[0], input_tensors=crops)  # its layers called on ``crops``: one graph
    flat.set_weights(models[0].get_weights())
    outputs = [_calibrated_log_probabilities(first, flat.output, "member_0")]
    for index, (card, model) in enumerate(zip(cards[1:], models[1:], strict=True), start=1):
        logits = _chained(model, _member_input(card.input, first.input, crops), f"member_{index}_")
        outputs.append(_calibrated_log_probabilities(card, logits, f"member_{index}"))
    return keras.Model(crops, layers.Average(name="ensemble")(outputs), name="btd-ensemble")


def write_ensemble(
    member_paths: list[Path], out_dir: Path, command: str, root: Path | None = None, log: Any = print
) -> dict[str, Any]:
    """Build the ensemble of the member cards, save it with its card and the first member's split file in
    ``out_dir``, and finish the card on the training folders ``root`` when given. Returns the card."""
    import keras

    from core.training.finish import finish_card

    cards = [ModelCard.from_file(path) for path in member_paths]
    network = build_ensemble(cards)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "btd-ensemble.keras"
    keras.saving.save_model(network, weights)
    shutil.copyfile(split_file_of(Path(member_paths[0])), out_dir / "btd-ensemble.split.json")
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    raws = [json.loads(Path(path).read_text()) for path in member_paths]
    folders = [raw.get("data", {}).get("folders") for raw in raws]
    card = {
        "name": "btd-ensemble",
        "version": f"3.0.0+{sha256[:8]}",
        "labels": list(cards[0].labels),
        "negative_label": cards[0].negative_label,
        "input": asdict(cards[0].input),
        "output": "logits",
        "threshold": 0.5,
        "calibration": {"temperature": 1.0, "logit_bias": {}},
        "weights": {"file": weights.name, "sha256": sha256},
        "parameters": int(network.count_params()),
        "architecture": "ensemble: the mean of its members' calibrated log-probabilities, one network",
        "members": [
            {"name": c.name, "version": c.version, "sha256": c.weights_sha256, "temperature": c.temperature}
            | {"logit_bias": dict(c.logit_bias), "input": raw["input"]}
            for c, raw in zip(cards, raws, strict=True)
        ],
        "metrics": {},
        "data": {"split_file": "btd-ensemble.split.json"}
        | ({} if None in folders else {"folders": sorted({Path(f).name for group in folders for f in group})}),
        "training": {
            "recipe": "core.training.ensemble",
            "command": command,
            "members_recipes": [raw.get("training", {}).get("recipe") for raw in raws],
            "machine": machine(),
            "backend": f"keras {keras.__version__} on {keras.backend.backend()}",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    card_path = out_dir / "btd-ensemble.json"
    write_card(card_path, card)
    if root is not None:
        card = finish_card(card_path, root, log)
    return card
