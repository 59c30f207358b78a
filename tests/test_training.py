"""The training path stays alive (one short epoch on generated images) and keeps twins on one side."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.evaluation.splits import read_split
from core.imaging import read_scan, read_scan_file
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.decision import DecisionRule
from core.model.preprocess import InputSpec
from core.training.augment import augment, match_histogram
from core.training.calibration import fit_temperature, mean_nll, recalibrate_batchnorm
from core.training.checkpoint import PROJECT, code_version
from core.training.config import CLASSES, TrainConfig
from core.training.data import (
    Dataset,
    assign_units,
    label_masks,
    load,
    sampling_weights,
    split,
    split_dataset,
    thumbnails,
    twin_groups,
)
from core.training.lesions import synthetic_lesion
from core.training.network import batches
from core.training.probes import fit_review_band, fit_subtype_share, inference_inputs, lgg_targets
from core.training.run import train
from core.training.sources import Item, discover
from core.training.transplants import donors, transplant
from tests.scans import jpeg_bytes, png_bytes, synthetic_slice

pytestmark = pytest.mark.training


def make_folder(root: Path, per_class: int = 6) -> Path:
    for k, label in enumerate(("glioma", "meningioma", "notumor", "pituitary", "tumour")):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = synthetic_slice(128, tumour=label != "notumor", seed=100 * k + i, offset=(4 * i - 10, 3 * k - 6))
            (root / label / f"{10 * i}.png").write_bytes(png_bytes(image))  # numbered apart: other patients
    return root


def test_smoke_training_writes_a_loadable_model_and_card(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    config = TrainConfig(size=32, widths=(8, 16), samples_per_epoch=0, epochs=1, batch_size=8, name="smoke")
    card = train([data], tmp_path / "models", config, "pytest smoke")
    assert card["training"]["epochs_run"] == 1 and card["training"]["command"] == "pytest smoke"
    assert card["data"]["decoded"] == 30
    on_disk = json.loads((tmp_path / "models" / "smoke.json").read_text())
    assert on_disk["weights"]["sha256"] == card["weights"]["sha256"]
    assert on_disk["gate"]["max_energy"] is not None  # the input gate was fitted on the validation split
    assert on_disk["input"] == {"size": 32, "channels": 2, "crop": True, "scaling": "percentile", "mirror": True}
    if (PROJECT / ".git").exists() and shutil.which("git"):  # a copy without .git or git records "unknown"
        assert on_disk["training"]["code_version"] not in ("", "unknown")
    else:
        assert on_disk["training"]["code_version"] == "unknown"
    assert on_disk["training"]["started_from"] is None and on_disk["training"]["config"]["synthetic_lesions"] == 0.0
    validation = on_disk["metrics"]["validation"]
    assert 0.0 <= validation["lesion_probe_tumour_recall"] <= 1.0 and validation["lesion_probe_n"] >= 1
    classifier = Classifier.from_card(tmp_path / "models" / "smoke.json")
    prediction = analyse(png_bytes(synthetic_slice(256)), classifier).prediction
    assert prediction.model_name == "smoke" and sum(prediction.probabilities.values()) > 0.999
    split_file = json.loads((tmp_path / "models" / "smoke.split.json").read_text())
    assert len(split_file["validation"]) == card["data"]["validation"]
    # the card's validation loss of the shipped weights (the kept epoch after its batch-normalisation statistics
    # were recomputed) is the allowed-label NLL of their validation logits, on scans of a known class only (the
    # web-style "tumour" folder never chooses anything)
    entries = [
        (label, path)
        for label, path in read_split(tmp_path / "models" / "smoke.split.json", tmp_path)
        if label in CLASSES
    ]
    inputs = inference_inputs([read_scan_file(path).pixels for _, path in entries], classifier.card.input)
    logits = classifier.model.predict(inputs, verbose=0)
    kept_loss = mean_nll(logits, label_masks([label for label, _ in entries]))
    assert abs(kept_loss - card["training"]["shipped_val_loss"]) < 1e-4


def test_training_without_the_mirror_channel_gives_a_one_channel_model(tmp_path: Path) -> None:
    config = TrainConfig(
        size=32, widths=(8, 16), samples_per_epoch=0, epochs=1, batch_size=8, name="plain", mirror=False
    )
    card = train([make_folder(tmp_path / "data")], tmp_path / "models", config, "pytest plain")
    assert card["input"]["channels"] == 1 and card["input"]["mirror"] is False
    classifier = Classifier.from_card(tmp_path / "models" / "plain.json")
    assert classifier.model.input_shape == (None, 32, 32, 1)


def test_fine_tuning_starts_from_a_model_validated_on_the_same_split_and_refuses_any_other(tmp_path: Path) -> None:
    import keras
    import pytest

    data = make_folder(tmp_path / "data")
    config = TrainConfig(size=32, widths=(8, 16), samples_per_epoch=0, epochs=1, batch_size=8, name="base")
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
    config = TrainConfig(size=32, widths=(8, 16), samples_per_epoch=0, epochs=2, batch_size=8, name="twice")
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
    config = TrainConfig(size=32, widths=(8, 16), samples_per_epoch=0, epochs=3, batch_size=8, name="long")
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


def test_every_class_and_every_source_within_it_gets_an_equal_share_and_each_unit_one_vote() -> None:
    items = (
        [Item(Path(f"t{i}"), "notumor", "Training") for i in range(4)]  # three twins of one slice, and one more
        + [Item(Path(f"n{i}"), "notumor", "Normal-heads", unit=f"subj{i % 2}") for i in range(6)]
        + [Item(Path(f"g{i}"), "glioma", "Training") for i in range(2)]
        + [Item(Path(f"l{i}"), "glioma", "LGG", unit="p1", tumour_pixels=500) for i in range(3)]
        + [Item(Path("tiny"), "glioma", "LGG", unit="p2", tumour_pixels=20)]  # too small a mask to train on
    )
    data = Dataset(items=items, images=[np.zeros((8, 8), np.uint8)] * len(items))
    units = ["twins:0"] * 3 + ["twins:3"] + [f"N:{i.unit}" for i in items[4:10]] + ["twins:10", "twins:11"]
    data.units = np.array([*units, "L:p1", "L:p1", "L:p1", "L:p2"], dtype=object)
    p = sampling_weights(data, np.arange(len(items)), TrainConfig())
    by = lambda cond: sum(p[i] for i, item in enumerate(items) if cond(item))  # noqa: E731
    assert by(lambda i: i.label == "notumor") == pytest.approx(by(lambda i: i.label == "glioma"))
    assert by(lambda i: i.source == "Training" and i.label == "notumor") == pytest.approx(
        by(lambda i: i.source == "Normal-heads")
    )
    assert p[0] == pytest.approx(p[3] / 3)  # a twin group of three has one vote, like a single slice
    assert p[-1] == 0  # the 20-pixel mask is not trained on
    assert p.sum() == pytest.approx(1.0)


def lgg_like(root: Path) -> Path:
    """A folder laid out like the LGG collection: slices.csv, class folders and masks, three patients."""
    (root / "glioma").mkdir(parents=True)
    (root / "notumor").mkdir()
    (root / "masks").mkdir()
    rows = ["file,patient,institution,slice,sequence,label,tumour_pixels,head_pixels"]
    for p, institution in enumerate(("AA", "AA", "BB")):
        patient = f"TCGA_{institution}_{p:04d}_20000101"
        for k in range(4):
            tumour = k % 2 == 0
            image = synthetic_slice(128, tumour=tumour, seed=10 * p + k)
            label = "glioma" if tumour else "notumor"
            name = f"{patient}_{k + 1}_flair.jpg"
            (root / label / name).write_bytes(jpeg_bytes(image))
            if tumour:
                mask = np.zeros((128, 128), np.uint8)
                mask[30:50, 70:90] = 255
                (root / "masks" / f"{patient}_{k + 1}.png").write_bytes(png_bytes(mask))
            rows.append(f"{label}/{name},{patient},{institution},{k + 1},flair,{label},{400 if tumour else 0},20000")
    (root / "slices.csv").write_text("\n".join(rows) + "\n")
    return root


def test_sources_name_their_split_units_and_a_held_out_institution_is_never_trained_or_validated_on(tmp_path) -> None:
    root = lgg_like(tmp_path / "LGG")
    heads = tmp_path / "Normal-heads" / "notumor"
    heads.mkdir(parents=True)
    for s in range(4):
        (heads / f"subj0{s}_t1_sag_0{s}1.png").write_bytes(png_bytes(synthetic_slice(128, seed=50 + s)))
    items = discover([root, tmp_path / "Normal-heads"])
    lgg = [item for item in items if item.source == "LGG"]
    assert len(lgg) == 12 and {item.institution for item in lgg} == {"AA", "BB"}
    assert sum(item.mask is not None for item in lgg) == 6 and lgg[0].sequence == "flair"
    assert {item.unit for item in items if item.source == "Normal-heads"} == {"subj00", "subj01", "subj02", "subj03"}
    assert {item.plane for item in items if item.source == "Normal-heads"} == {"sagittal"}
    data, _ = load(items)
    assign_units(data, 0.97)
    config = TrainConfig(unit_val_fraction=0.5, hold_out=("BB",))
    train_idx, val_idx, held_idx = split_dataset(data, config)
    assert {data.items[i].institution for i in held_idx} == {"BB"}
    assert not {data.items[i].institution for i in (*train_idx, *val_idx)} & {"BB"}
    assert not set(data.units[train_idx]) & set(data.units[val_idx])  # a patient or subject never straddles
    assert len(train_idx) + len(val_idx) + len(held_idx) == len(data.items)


def test_a_transplanted_tumour_lands_inside_the_recipients_brain_and_shows(tmp_path) -> None:
    root = lgg_like(tmp_path / "LGG")
    items = [item for item in discover([root]) if item.mask is not None]
    images = [read_scan_file(item.path).pixels for item in items]
    found = donors(items, images)
    assert len(found) == len(items) and found[0].patch.shape == found[0].mask.shape
    recipient = synthetic_slice(128, seed=7)
    rng = np.random.default_rng(0)
    results = [transplant(recipient, found[k % len(found)], rng) for k in range(12)]
    placed = [r for r in results if r is not None]
    assert len(placed) >= 6
    for result in placed:
        changed = np.abs(result.astype(int) - recipient) > 12
        ys, xs = np.nonzero(changed)
        assert changed.sum() >= 20 and recipient[ys, xs].mean() > 40  # in tissue, not in the black background
    assert transplant(np.zeros((128, 128), np.uint8), found[0], rng) is None  # no head: no tumour


def test_the_review_band_holds_every_unsure_call_and_widens_until_the_rest_are_rarely_wrong() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 4000)
    truth = rng.uniform(0, 1, 4000) < p  # calibrated: P(tumour) = p
    low, high = fit_review_band(p, truth, max_error=0.02)
    assert low <= 0.2 and high >= 0.8
    assert truth[p < low].mean() <= 0.02 and (~truth[p >= high]).mean() <= 0.02
    assert fit_review_band(np.r_[np.zeros(50), np.ones(50)], np.r_[np.zeros(50), np.ones(50)] > 0) == (0.2, 0.8)


def test_the_type_is_named_only_when_it_stands_out() -> None:
    labels = ["glioma", "meningioma"] * 50
    sure = [[0.9, 0.05, 0.05, 0.0], [0.05, 0.9, 0.05, 0.0]] * 50
    assert fit_subtype_share(np.array(sure), labels) is None  # always right: always named
    muddled = [[0.45, 0.4, 0.15, 0.0], [0.5, 0.35, 0.15, 0.0]] * 50  # the second row's type is wrong
    share = fit_subtype_share(np.array(muddled + sure), labels * 2)
    assert share is not None and 0.55 < share <= 0.98
    # three-way muddles (the top type holds a third to a half of P(tumour), and is wrong) must be checked too
    three_way = [[0.30, 0.32, 0.05, 0.33]] * 50  # glioma, named pituitary at a share of 0.35
    share = fit_subtype_share(np.array(sure[::2] + three_way), ["glioma"] * 100)
    assert share is not None and 0.35 < share <= 0.5
    # fitted on the tumours the card's threshold calls tumour: at 0.7 the unsure ones below (P(tumour) 0.67) are
    # no tumour verdicts, so no type of theirs is ever named (it was fitted at 0.5 whatever the card served)
    unsure = [[0.22, 0.24, 0.33, 0.21]] * 50  # glioma named meningioma, P(tumour) 0.67
    assert fit_subtype_share(np.array(sure[::2] + unsure), ["glioma"] * 100) is not None
    assert fit_subtype_share(np.array(sure[::2] + unsure), ["glioma"] * 100, threshold=0.7) is None


def test_the_decision_rule_keeps_the_threshold_the_card_serves() -> None:
    """The fitted rule was built at 0.5 whatever the card said; a threshold kept in the card's decision section
    was dropped when the section was written anew."""
    from core.training.finish import fit_rule, kept_threshold

    rng = np.random.default_rng(1)
    labels = list(rng.choice(["glioma", "meningioma", "pituitary", "notumor"], 800))
    logits = rng.normal(0, 1, (800, 4)) + np.array([[3.0 * (label == c) for c in CLASSES] for label in labels])
    assert fit_rule(logits, labels)[2].threshold == 0.5
    assert fit_rule(logits, labels, threshold=0.35)[2].threshold == 0.35
    assert kept_threshold({"decision": {"threshold": 0.35, "review_band": [0.2, 0.8]}}) == {"threshold": 0.35}
    assert kept_threshold({"threshold": 0.35, "decision": {}}) == {}  # kept at the top: left where it is


def test_lgg_targets_count_only_clear_tumours_and_sections_with_enough_head() -> None:
    items = [
        Item(Path("a"), "glioma", "LGG", "p", "AA", "flair", tumour_pixels=400),
        Item(Path("b"), "glioma", "LGG", "p", "AA", "t1", tumour_pixels=400),  # plain T1: not in the target
        Item(Path("c"), "glioma", "LGG", "p", "AA", "t1c", tumour_pixels=100),  # a small mask: not either
        Item(Path("d"), "notumor", "LGG", "p", "AA", "flair", tumour_pixels=0, head_pixels=20000),
        Item(Path("e"), "notumor", "LGG", "p", "AA", "flair", tumour_pixels=0, head_pixels=5000),  # vertex
    ]
    p = np.array([[0.9, 0, 0.1, 0], [0.1, 0, 0.9, 0], [0.1, 0, 0.9, 0], [0.1, 0, 0.9, 0], [0.9, 0, 0.1, 0]])
    targets = lgg_targets(p, items, DecisionRule())
    assert targets["AA"]["sensitivity"]["value"] == 1.0 and targets["AA"]["sensitivity"]["n"] == 1
    assert targets["AA"]["specificity"]["value"] == 1.0 and targets["AA"]["specificity"]["n"] == 1
    by_sequence = targets["AA"]["sensitivity_by_sequence"]  # plain T1 reported beside the target, missed here
    assert by_sequence["t1"]["value"] == 0.0 and by_sequence["t1"]["n"] == 1
    assert by_sequence["flair"]["n"] == 1 and by_sequence["t1c"]["n"] == 0


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
    masks = label_masks(labels)
    probabilities = np.full(16, 1 / 16)
    references = [synthetic_slice(64, seed=99)]
    normal, tumour_of_unknown_type = (tuple(label_masks([label])[0]) for label in ("notumor", "tumour"))
    for share in (0.0, 1.0):
        config = TrainConfig(size=64, batch_size=16, samples_per_epoch=16, synthetic_lesions=share, transplants=0)
        stream = batches(images, np.arange(16), probabilities, masks, config, references)
        x, batch_masks, batch_weights = stream[0]
        rows = [tuple(row) for row in batch_masks]
        assert len(rows) - rows.count(tumour_of_unknown_type) == 16  # every drawn scan keeps its own label
        twins = rows.count(tumour_of_unknown_type)
        assert twins == 0 if not share else rows.count(normal) // 2 <= twins <= rows.count(normal)  # when one fits
        assert x.shape == (len(rows), 64, 64, 2) and batch_weights.shape == (len(rows),)
        spread = []
        for i in (i for i, row in enumerate(rows) if row == tumour_of_unknown_type):
            assert rows[i - 1] == normal  # right after its normal twin
            difference = np.abs(x[i, :, :, 0] - x[i - 1, :, :, 0])
            assert (difference > 0.08).sum() >= 10  # the lesion shows
            spread.append((difference > 0.15).mean())
        # and it is most of the difference (the per-image scaling may shift the rest, most of all in an inverted
        # look where a dark lesion becomes the brightest tissue)
        assert not spread or np.median(spread) < 0.1


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


def test_batchnorm_recalibration_takes_the_population_statistics_of_the_given_inputs() -> None:
    import keras

    inputs = keras.Input((8, 8, 1))
    first = keras.layers.BatchNormalization()(keras.layers.Conv2D(3, 3, padding="same")(inputs))
    second = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(keras.layers.ReLU()(first)))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(second))
    batch = np.random.default_rng(0).normal(5.0, 3.0, (70, 8, 8, 1)).astype(np.float32)  # 70: a ragged last batch
    recalibrate_batchnorm(model, batch, batch_size=32)
    for layer in [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]:
        features = np.asarray(keras.Model(model.inputs[0], layer.input)(batch), np.float64).reshape(
            -1, layer.input.shape[-1]
        )
        np.testing.assert_allclose(np.asarray(layer.moving_mean), features.mean(axis=0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), features.var(axis=0), rtol=1e-3, atol=1e-4)
    normalised = np.asarray(keras.Model(model.inputs[0], model.layers[2].output)(batch)).reshape(-1, 3)
    np.testing.assert_allclose(normalised.mean(axis=0), 0.0, atol=1e-2)  # the first layer's output is now centred


def test_calibrate_command_recomputes_an_old_models_statistics_and_refits_its_card(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = make_folder(tmp_path / "Training")  # the folder name finish_card looks for under the data root
    config = TrainConfig(size=32, widths=(8, 16), samples_per_epoch=0, epochs=1, batch_size=8, name="old")
    before = train([data], tmp_path / "models", config, "pytest old")
    card_path = tmp_path / "models" / "old.json"
    done = subprocess.run(
        [sys.executable, "-m", "core", "calibrate", "--batchnorm", "--model", str(card_path), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["model"] == "old" and "temperature" in json.loads(done.stdout)["calibration"]
    after = json.loads(card_path.read_text())
    assert after["weights"]["sha256"] != before["weights"]["sha256"]  # new statistics, new hash
    assert after["weights"]["batchnorm"].startswith("statistics recomputed on 19 clean training scans")
    assert Classifier.from_card(card_path).card.weights_sha256 == after["weights"]["sha256"]  # hash check passes
    # a refitted model is another version: results read by it are new records, statistics keep them apart
    assert after["version"] != before["version"] and after["version"].startswith(f"{before['version'].split('+')[0]}+")
    assert after["version"].split("+")[1].startswith(after["weights"]["sha256"][:8])
    assert json.loads(done.stdout)["version"] == after["version"]


def test_the_code_version_is_the_projects_own_whatever_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    """It ran ``git describe`` in the current folder: outside a checkout, or inside another one, it was wrong."""
    here = code_version()
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert code_version() == here and here != ""


def test_the_code_version_is_unknown_without_a_checkout_without_git_or_when_git_hangs(
    tmp_path: Path, monkeypatch
) -> None:
    """A card made from an unpacked release, a copy without its .git, or on a machine without git says "unknown"
    instead of failing the training (or naming the commit of a checkout the copy happens to sit in)."""
    inside = PROJECT / "tests" / "data"  # a folder inside this checkout that has no .git of its own
    assert code_version(tmp_path) == "unknown" and code_version(inside) == "unknown"
    (tmp_path / ".git").mkdir()  # not a repository git can read
    assert code_version(tmp_path) == "unknown"
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert code_version() == "unknown"

    def hangs(command: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(command, 5)

    monkeypatch.setattr(subprocess, "run", hangs)
    assert code_version() == "unknown"


def test_a_refit_writes_its_rules_and_their_version_in_one_write(tmp_path: Path, monkeypatch) -> None:
    """``fit-*`` wrote the refitted card, then its new version in a second write: a crash between the two left the
    new rules served under the old version (results of both counted as one version)."""
    import os

    from core.training.gate_fit import fit_decision

    data = make_folder(tmp_path / "Training")
    config = TrainConfig(size=32, widths=(8, 16), samples_per_epoch=0, epochs=1, batch_size=8, name="old")
    before = train([data], tmp_path / "models", config, "pytest old")
    card_path = tmp_path / "models" / "old.json"
    written, replace_file = [], os.replace

    def recorded(source: str, target: str) -> None:
        written.append(json.loads(Path(source).read_text()))
        replace_file(source, target)

    monkeypatch.setattr(os, "replace", recorded)
    decision = fit_decision(card_path, tmp_path, max_error=0.01, restamp=True)
    after = json.loads(card_path.read_text())
    assert len(written) == 1 and written[0] == after  # one write: rules and version together
    assert after["decision"] == decision and after["version"] != before["version"]
    assert after["version"].startswith(f"{before['version'].split('+')[0]}+{after['weights']['sha256'][:8]}.")
    fit_decision(card_path, tmp_path, max_error=0.01, restamp=True)
    assert json.loads(card_path.read_text())["version"] == after["version"]  # the same fit keeps its version
    fit_decision(card_path, tmp_path, max_error=0.2, restamp=True)
    changed = json.loads(card_path.read_text())
    assert changed["decision"] != decision and changed["version"] != after["version"]


def test_every_fit_leaves_out_a_validation_file_the_app_refuses_before_the_model(tmp_path: Path) -> None:
    """calibrate left out a validation file with no head region (the app never gives one to the model), while
    fit-decision and fit-gate stopped at it with NoBrainFound."""
    import json

    from core.training.finish import raw_logits, split_items
    from core.training.gate_fit import fit_decision, fit_gate
    from tests.scans import png_bytes, synthetic_slice, write_model_card

    (tmp_path / "model").mkdir()
    card_path = write_model_card(tmp_path / "model")
    entries = []
    for k, label in enumerate(["notumor", "glioma"] * 3):
        path = tmp_path / "Training" / label / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(synthetic_slice(128, tumour=label != "notumor", seed=k)))
        entries.append([f"Training/{label}/{k}.png", label])
    (tmp_path / "Training" / "notumor" / "blank.png").write_bytes(png_bytes(np.full((128, 128), 40, np.uint8)))
    entries.append(["Training/notumor/blank.png", "notumor"])
    card_path.with_name(f"{card_path.stem}.split.json").write_text(json.dumps({"validation": entries}))
    _, kept = raw_logits(Classifier.from_card(card_path), split_items(tmp_path, entries, {}))
    assert len(kept) == 6  # calibrate's path
    decision = fit_decision(card_path, tmp_path)
    assert "validation split (6 scans of a known class)" in decision["fitted_on"]
    gate = fit_gate(card_path, tmp_path)
    assert gate["validation_scans"] == 7 and gate["validation_rejected_at_most"] >= 1  # refused, as by the app
    assert "validation split (6 scans)" in json.loads(card_path.read_text())["gate"]["fitted_on"]


def test_a_card_whose_labels_are_in_another_order_is_refused_before_anything_is_fitted(tmp_path: Path) -> None:
    """The fits index the outputs in CLASSES' order: a card listing its labels otherwise would get its no-tumour
    bias and its type rule on the wrong columns."""
    import json

    from core.training.finish import finish_card
    from core.training.gate_fit import fit_decision
    from tests.scans import write_model_card

    card_path = write_model_card(tmp_path)
    card = json.loads(card_path.read_text())
    card["labels"] = ["notumor", "glioma", "meningioma", "pituitary"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match="labels"):
        finish_card(card_path, tmp_path)
    with pytest.raises(ValueError, match="labels"):
        fit_decision(card_path, tmp_path)


def patient_section(seed: int, shift: int = 0, jitter: int = 0) -> np.ndarray:
    """A head of one patient's texture (``seed``), moved sideways by ``shift`` and a little altered by ``jitter``:
    the next section of the same patient, as the public collection numbers them."""
    import cv2

    head = synthetic_slice(128, seed=0) > 20
    texture = cv2.GaussianBlur(np.random.default_rng(seed).random((128, 128)).astype(np.float32), (0, 0), 6)
    if jitter:
        other = cv2.GaussianBlur(np.random.default_rng(1000 + jitter).random((128, 128)).astype(np.float32), (0, 0), 6)
        texture = 0.8 * texture + 0.2 * other
    texture = (texture - texture.min()) / np.ptp(texture)
    section = (head * (60 + 180 * texture)).astype(np.uint8)
    return cv2.warpAffine(section, np.float32([[1, 0, shift], [0, 1, 0]]), (128, 128))


def test_numbered_neighbours_of_one_patient_share_a_split_unit_that_twins_alone_did_not_join() -> None:
    """The public collection's units were twin groups only: adjacent sections of one patient (numbered 173, 174)
    are not twins, so one was trained on and the next scored, flattering its validation figures."""
    from core.evaluation.neighbours import neighbour_pairs

    names = ["Tr-gl_0173.jpg", "Tr-gl_0174.jpg", "Tr-gl_0175.jpg", "Tr-gl_0190.jpg", "Tr-me_0174.jpg"]
    images = [
        patient_section(1),
        patient_section(1, 5, 1),
        patient_section(1, -4, 2),
        patient_section(1, 14, 3),  # alike, but not twins
        patient_section(1, -14, 4),
    ]
    items = [Item(Path("Training/glioma") / n, "glioma", "Training") for n in names[:4]]
    items.append(Item(Path("Training/meningioma") / names[4], "meningioma", "Training"))
    data = Dataset(items=items, images=images)
    assert len(set(twin_groups(thumbnails(images[:3]), 0.97))) > 1  # not twins: twin groups alone split them
    assign_units(data, 0.97)
    assert data.units[0] == data.units[1] == data.units[2]  # 173-175: one patient, one side of any split
    assert data.units[3] != data.units[0]  # far in number: another series, even alike (a twin test decides)
    assert data.units[4] != data.units[0]  # another folder
    unlike = np.eye(3, dtype=np.float32)  # adjacent numbers, nothing alike: not joined
    assert neighbour_pairs([Path("a/x_1.png"), Path("a/x_2.png"), Path("a/x_3.png")], unlike) == []


def test_validation_files_with_a_trained_neighbour_are_found_on_disk(tmp_path: Path) -> None:
    from core.evaluation.neighbours import with_trained_neighbour

    folder = tmp_path / "Training" / "glioma"
    folder.mkdir(parents=True)
    for name, pixels in {
        "Tr-gl_0009.png": patient_section(2, 4, 1),  # trained on: the next section of 0010's patient
        "Tr-gl_0010.png": patient_section(2),
        "Tr-gl_0011.png": patient_section(2, -3, 2),  # scored too: not a trained neighbour
        "Tr-gl_0040.png": patient_section(3),
        "Tr-gl_0050.png": patient_section(3),  # alike but ten numbers away
    }.items():
        (folder / name).write_bytes(png_bytes(pixels))
    scored = [folder / "Tr-gl_0010.png", folder / "Tr-gl_0011.png", folder / "Tr-gl_0040.png"]
    assert with_trained_neighbour(scored) == {folder / "Tr-gl_0010.png", folder / "Tr-gl_0011.png"}


def test_a_mirrored_copy_is_a_twin_in_the_split_and_a_trained_twin_in_the_evaluation(tmp_path: Path) -> None:
    """Half the public collection's validation files had a left-right mirrored copy in training (the networks
    train with random flips, so they had seen them): its figures read 95 % specific where unseen files gave 88 %.
    Twins are now found mirrored too, in the split and in ``evaluate --without-neighbours``."""
    from core.evaluation.neighbours import with_trained_twin

    section = patient_section(5, 9)  # off-centre: its mirror is not itself
    flipped = np.ascontiguousarray(section[:, ::-1])
    thumbs = thumbnails([section, flipped, patient_section(6)])
    assert float(thumbs[0] @ thumbs[1]) < 0.97  # as stored, not twins: mirrored copies fell on both sides
    groups = twin_groups(thumbs, 0.97)
    assert groups[0] == groups[1] != groups[2]
    folder = tmp_path / "Training" / "glioma"
    folder.mkdir(parents=True)
    for name, pixels in {
        "Tr-gl_0100.png": section,
        "Tr-gl_0400.png": flipped,
        "Tr-gl_0700.png": patient_section(6),
    }.items():
        (folder / name).write_bytes(png_bytes(pixels))
    scored = [folder / "Tr-gl_0100.png", folder / "Tr-gl_0700.png"]
    assert with_trained_twin(scored) == {folder / "Tr-gl_0100.png"}
    assert with_trained_twin([*scored, folder / "Tr-gl_0400.png"]) == set()  # both scored: nothing trained on


def test_an_interval_over_patients_is_wide_when_a_few_patients_give_every_section() -> None:
    """Two patients of 50 sections each, one all found and one all missed: the Wilson interval over 100 sections
    said 0.40-0.60, as if 100 patients had been seen."""
    from core.evaluation.metrics import patient_interval, wilson_interval

    hits = [True] * 50 + [False] * 50
    patients = ["a"] * 50 + ["b"] * 50
    low, high = patient_interval(hits, patients)
    assert low <= 0.05 and high >= 0.95 and wilson_interval(50, 100) == [0.4038, 0.5962]
    spread = patient_interval([k % 2 == 0 for k in range(100)], [f"p{k}" for k in range(100)])
    assert 0.38 <= spread[0] <= 0.42 and 0.58 <= spread[1] <= 0.62  # independent sections: about Wilson's
    assert patient_interval([], []) is None
    items = [Item(Path(f"{k}"), "glioma", "LGG", f"p{k % 3}", "AA", "flair", tumour_pixels=400) for k in range(6)]
    targets = lgg_targets(np.tile([[0.9, 0, 0.1, 0]], (6, 1)), items, DecisionRule())
    assert targets["AA"]["sensitivity"]["patients"] == 3 and targets["AA"]["sensitivity"]["patients_95"] == [1.0, 1.0]
