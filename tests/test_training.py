"""The training path stays alive (one short epoch on generated images) and keeps twins on one side."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.evaluation.splits import read_split
from core.imaging import read_scan, read_scan_file
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.preprocess import InputSpec
from core.training.augment import augment, match_histogram
from core.training.calibration import fit_temperature, mean_nll
from core.training.config import CLASSES, TrainConfig
from core.training.data import label_masks, sample_weights, split, thumbnails, twin_groups
from core.training.lesions import synthetic_lesion
from core.training.network import _batches
from core.training.probes import inference_inputs
from core.training.run import train
from tests.scans import jpeg_bytes, png_bytes, synthetic_slice


def make_folder(root: Path, per_class: int = 6) -> Path:
    for k, label in enumerate(("glioma", "meningioma", "notumor", "pituitary", "tumour")):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = synthetic_slice(128, tumour=label != "notumor", seed=100 * k + i, offset=(4 * i - 10, 3 * k - 6))
            (root / label / f"{i}.png").write_bytes(png_bytes(image))
    return root


def test_smoke_training_writes_a_loadable_model_and_card(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    config = TrainConfig(size=32, widths=(8, 16), epochs=1, batch_size=8, name="smoke")
    card = train([data], tmp_path / "models", config, "pytest smoke")
    assert card["training"]["epochs_run"] == 1 and card["training"]["command"] == "pytest smoke"
    assert card["data"]["decoded"] == 30
    on_disk = json.loads((tmp_path / "models" / "smoke.json").read_text())
    assert on_disk["weights"]["sha256"] == card["weights"]["sha256"]
    assert on_disk["gate"]["max_energy"] is not None  # the input gate was fitted on the validation split
    assert on_disk["input"] == {"size": 32, "channels": 2, "crop": True, "scaling": "percentile", "mirror": True}
    assert on_disk["training"]["code_version"] not in ("", "unknown")
    assert on_disk["training"]["started_from"] is None and on_disk["training"]["config"]["synthetic_lesions"] == 0.0
    validation = on_disk["metrics"]["validation"]
    assert 0.0 <= validation["lesion_probe_tumour_recall"] <= 1.0 and validation["lesion_probe_n"] >= 1
    classifier = Classifier.from_card(tmp_path / "models" / "smoke.json")
    prediction = analyse(png_bytes(synthetic_slice(256)), classifier).prediction
    assert prediction.model_name == "smoke" and sum(prediction.probabilities.values()) > 0.999
    split_file = json.loads((tmp_path / "models" / "smoke.split.json").read_text())
    assert len(split_file["validation"]) == card["data"]["validation"]
    # the validation loss that chose the kept epoch is the allowed-label NLL of the kept model's validation logits
    entries = read_split(tmp_path / "models" / "smoke.split.json", tmp_path)
    inputs = inference_inputs([read_scan_file(path).pixels for _, path in entries], classifier.card.input)
    logits = classifier.model.predict(inputs, verbose=0)
    kept_loss = mean_nll(logits, label_masks([label for label, _ in entries]))
    assert abs(kept_loss - card["training"]["best_val_loss"]) < 1e-4


def test_training_without_the_mirror_channel_gives_a_one_channel_model(tmp_path: Path) -> None:
    config = TrainConfig(size=32, widths=(8, 16), epochs=1, batch_size=8, name="plain", mirror=False)
    card = train([make_folder(tmp_path / "data")], tmp_path / "models", config, "pytest plain")
    assert card["input"]["channels"] == 1 and card["input"]["mirror"] is False
    classifier = Classifier.from_card(tmp_path / "models" / "plain.json")
    assert classifier.model.input_shape == (None, 32, 32, 1)


def test_fine_tuning_starts_from_a_model_validated_on_the_same_split_and_refuses_any_other(tmp_path: Path) -> None:
    import keras
    import pytest

    data = make_folder(tmp_path / "data")
    config = TrainConfig(size=32, widths=(8, 16), epochs=1, batch_size=8, name="base")
    base = train([data], tmp_path / "base", config, "pytest base")
    tuned_config = replace(config, name="tuned", init=str(tmp_path / "base" / "base.json"), learning_rate=1e-4)
    tuned = train([data], tmp_path / "tuned", tuned_config, "pytest tuned")
    assert tuned["training"]["started_from"] == {"version": base["version"], "sha256": base["weights"]["sha256"]}
    before = keras.saving.load_model(tmp_path / "base" / "base.keras", compile=False).get_weights()
    after = keras.saving.load_model(tmp_path / "tuned" / "tuned.keras", compile=False).get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))  # it did train further
    with pytest.raises(ValueError, match="split"):  # another seed gives another split: its validation scans leak
        train([data], tmp_path / "leak", replace(tuned_config, seed=7), "pytest leak")
    with pytest.raises(ValueError, match="takes"):
        train([data], tmp_path / "plain", replace(tuned_config, mirror=False), "pytest plain")


def test_the_same_command_twice_gives_bit_identical_weights(tmp_path: Path) -> None:
    import keras

    data = make_folder(tmp_path / "data")
    config = TrainConfig(size=32, widths=(8, 16), epochs=2, batch_size=8, name="twice")
    weights = []
    for run in ("a", "b"):
        train([data], tmp_path / run, config, "pytest twice")
        weights.append(keras.saving.load_model(tmp_path / run / "twice.keras", compile=False).get_weights())
    assert len(weights[0]) == len(weights[1]) > 0
    assert all(np.array_equal(x, y) for x, y in zip(*weights, strict=True))


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_weights_of_an_uninterrupted_one(
    tmp_path: Path, monkeypatch
) -> None:
    import pytest

    import core.training.checkpoint

    class Killed(Exception):
        pass

    save, seen, die_after = core.training.checkpoint.Checkpoint.save, {}, {"epoch": None}

    def save_and_record(self, model, progress, seconds):  # every epoch's variables; "dies" after one epoch if told
        save(self, model, progress, seconds)
        seen[(self.path.parent.name, progress.epochs_done)] = [v.numpy() for v in model.variables]
        if progress.epochs_done == die_after["epoch"]:
            raise Killed

    monkeypatch.setattr(core.training.checkpoint.Checkpoint, "save", save_and_record)
    data = make_folder(tmp_path / "data")
    config = TrainConfig(size=32, widths=(8, 16), epochs=3, batch_size=8, name="long")
    whole = train([data], tmp_path / "whole", config, "pytest whole")
    assert whole["training"]["resumed"] == [] and not (tmp_path / "whole" / "long.checkpoint.npz").exists()
    die_after["epoch"] = 2
    with pytest.raises(Killed):
        train([data], tmp_path / "parts", config, "pytest parts")
    assert (tmp_path / "parts" / "long.checkpoint.npz").is_file() and not (tmp_path / "parts" / "long.keras").exists()
    with pytest.raises(ValueError, match="another run"):  # other settings must not continue this run
        train([data], tmp_path / "parts", replace(config, learning_rate=5e-4), "pytest other")
    die_after["epoch"] = None
    resumed = train([data], tmp_path / "parts", replace(config, max_minutes=120.0), "pytest parts")  # a new budget
    assert [part["after_epoch"] for part in resumed["training"]["resumed"]] == [2]
    assert resumed["training"]["epochs_run"] == 3
    assert resumed["training"]["best_val_loss"] == whole["training"]["best_val_loss"]
    assert not (tmp_path / "parts" / "long.checkpoint.npz").exists()  # a finished run leaves no checkpoint
    # the epoch trained after resuming (optimizer state, learning-rate step, augmentation and dropout streams
    # restored) ends with the very variables of the uninterrupted run's third epoch
    assert all(np.array_equal(x, y) for x, y in zip(seen[("whole", 3)], seen[("parts", 3)], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(seen[("whole", 2)], seen[("whole", 3)], strict=True))


def test_near_identical_twins_share_a_group_and_one_side_of_the_split() -> None:
    base = [synthetic_slice(96, seed=s, offset=(3 * s, -2 * s), tumour=s % 2 == 0) for s in range(12)]
    # Twins: the same slice re-encoded as JPEG and resized, as in the public collection.
    twins = [read_scan(jpeg_bytes(b, 70)).pixels for b in base]
    images = base + twins
    groups = twin_groups(thumbnails(images), 0.97)
    for i in range(12):
        assert groups[i] == groups[12 + i]
    labels = ["glioma" if i % 2 else "notumor" for i in range(12)] * 2
    train_idx, val_idx = split(labels, groups, TrainConfig(val_fraction=0.3))
    assert len(val_idx) and len(train_idx)
    assert not set(groups[train_idx]) & set(groups[val_idx])


def test_unknown_subtype_tumours_may_be_any_tumour_class() -> None:
    masks = label_masks(["glioma", "tumour", "notumor"])
    assert masks.tolist() == [[1, 0, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0]]


def test_twins_are_down_weighted_and_classes_balanced() -> None:
    labels = ["notumor"] * 4 + ["glioma"] * 2
    groups = np.array([0, 0, 0, 1, 2, 3])  # three twins of one notumor slice
    weights = sample_weights(labels, groups, unknown_weight=3.0)
    assert weights[:4].sum() == np.float32(weights[4:].sum())
    assert weights[0] < weights[3]


def test_augmentation_keeps_the_model_input_contract() -> None:
    rng = np.random.default_rng(0)
    spec = InputSpec(64)
    image = synthetic_slice(224, tumour=True)
    for _ in range(10):
        x, with_lesion = augment(image, rng, spec, reference=synthetic_slice(64, seed=3))
        assert with_lesion is None
        assert x.shape == (64, 64, 1) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1


def test_augmentation_turns_scans_only_as_far_as_the_rotation_setting_allows() -> None:
    import cv2

    head = cv2.ellipse(np.zeros((256, 256), np.uint8), (128, 128), (100, 45), 0, 0, 360, 180, -1)

    def turns(rotation: float) -> list[float]:  # the long axis of the head in each augmented input, in degrees
        rng, angles = np.random.default_rng(1), []
        for _ in range(24):
            x, _ = augment(head, rng, InputSpec(64), reference=None, rotation=rotation)
            m = cv2.moments((x[..., 0] > 0.5 * x.max()).astype(np.uint8), binaryImage=True)
            angles.append(abs(np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))))
        return angles

    assert max(turns(0)) < 4
    wide = turns(40)
    assert max(wide) > 25 and max(wide) < 45


def test_a_synthetic_lesion_is_painted_inside_the_head_and_nowhere_else() -> None:
    square = synthetic_slice(160)
    changed_somewhere = 0
    for seed in range(12):
        painted = synthetic_lesion(square, np.random.default_rng(seed))
        assert painted is not None and painted.shape == square.shape and painted.dtype == np.uint8
        changed = np.abs(painted.astype(int) - square.astype(int)) > 20
        assert changed.sum() >= 30  # a visible lesion, not a few stray pixels
        outside_head = square < 10  # the black background around the skull
        assert not (changed & outside_head).any()
        changed_somewhere += int(changed.any())
    assert np.array_equal(
        synthetic_lesion(square, np.random.default_rng(3)), synthetic_lesion(square, np.random.default_rng(3))
    )
    assert synthetic_lesion(np.zeros((160, 160), np.uint8), np.random.default_rng(0)) is None  # no head: no lesion


def test_normal_scans_also_train_as_lesioned_twins_of_unknown_tumour_type() -> None:
    labels = ["notumor"] * 8 + ["glioma"] * 8
    images = [synthetic_slice(128, tumour=label != "notumor", seed=i) for i, label in enumerate(labels)]
    masks, weights = label_masks(labels), np.arange(1, 17, dtype=np.float32)
    references = [synthetic_slice(64, seed=99)]
    normal, tumour_of_unknown_type = (tuple(label_masks([label])[0]) for label in ("notumor", "tumour"))
    glioma = tuple(np.eye(len(CLASSES), dtype=np.float32)[CLASSES.index("glioma")])
    for share in (0.0, 1.0):
        config = TrainConfig(size=64, batch_size=16, synthetic_lesions=share)
        x, batch_masks, batch_weights = _batches(images, np.arange(16), masks, weights, config, references, 0)[0]
        rows = [tuple(row) for row in batch_masks]
        assert rows.count(glioma) == 8 and rows.count(normal) == 8  # every scan keeps its own label
        assert rows.count(tumour_of_unknown_type) == (8 if share else 0)
        assert x.shape == (len(rows), 64, 64, 2) and batch_weights.shape == (len(rows),)
        for i in (i for i, row in enumerate(rows) if row == tumour_of_unknown_type):
            assert rows[i - 1] == normal and batch_weights[i] == batch_weights[i - 1]  # right after its normal twin
            difference = np.abs(x[i, :, :, 0] - x[i - 1, :, :, 0])
            assert (difference > 0.08).sum() >= 10  # the lesion shows
            assert (difference > 0.15).mean() < 0.25  # and is most of the difference (scaling may shift the rest)


def test_histogram_matching_takes_the_reference_distribution() -> None:
    image = synthetic_slice(128)
    reference = (synthetic_slice(128, seed=5).astype(np.float32) ** 0.7 * 6).clip(0, 255).astype(np.uint8)
    matched = match_histogram(image, reference)
    assert abs(float(np.median(matched)) - float(np.median(reference))) <= 3


def test_temperature_fit_recovers_an_overconfident_scale() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6000, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true = np.array([rng.choice(4, p=row) for row in p])  # labels drawn from softmax(logits): calibrated at T = 1
    masks = np.eye(4, dtype=np.float32)[true]
    assert 0.9 < fit_temperature(logits, masks) < 1.1
    assert 2.7 < fit_temperature(logits * 3.0, masks) < 3.3
