"""Model 3's recipe: the crop cache, the batch augmentation, the ResNet, the loss, the sampler and resuming."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from core.model.classifier import Classifier
from core.model.explain import stage_layers
from core.model.preprocess import to_model_input
from core.model.roi import find_brain
from core.training.cache import CropCache, build_cache, indices_of, split_indices
from core.training.data import label_masks
from core.training.loio import collect
from core.training.standard import AugmentSettings, batch_augment, build_resnet, smoothed_allowed_label_nll
from core.training.standard_run import StandardConfig, draw_batch, strata, train_standard
from tests.scans import png_bytes, synthetic_slice
from tests.test_training import lgg_like

pytestmark = pytest.mark.training


def make_root(root: Path, per_class: int = 4) -> Path:
    for k, label in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
        (root / "Training" / label).mkdir(parents=True)
        for i in range(per_class):
            image = synthetic_slice(96, tumour=label != "notumor", seed=50 * k + i)
            (root / "Training" / label / f"{i}.png").write_bytes(png_bytes(image))
    (root / "Web-tumour" / "tumour").mkdir(parents=True)
    for i in range(2):
        (root / "Web-tumour" / "tumour" / f"{i}.png").write_bytes(
            png_bytes(synthetic_slice(96, tumour=True, seed=900 + i))
        )
    lgg_like(root / "LGG")
    return root


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = make_root(tmp_path_factory.mktemp("data"))
    cache = build_cache(root, size=32, workers=1, log=lambda _: None)
    out = root.parent / "cache.npz"
    cache.save(out)
    return root, out


def test_the_cache_holds_each_image_cropped_exactly_as_the_app_crops_it(cache_file) -> None:
    root, out = cache_file
    cache = CropCache.load(out)
    assert len(cache) == 4 * 4 + 2 + 12 and cache.crops.shape[1:] == (32, 32) and cache.crops.dtype == np.uint8
    i = int(np.nonzero(cache.path == "Training/glioma/1.png")[0][0])
    from core.imaging import read_scan_file
    from core.model.preprocess import InputSpec

    pixels = read_scan_file(root / "Training/glioma/1.png").pixels
    app_input = to_model_input(pixels, find_brain(pixels).box, InputSpec(32, scaling="unit"))[..., 0]
    assert np.allclose(cache.crops[i] / 255.0, app_input, atol=1e-6)
    lgg = cache.source == "LGG"
    assert set(cache.institution[lgg]) == {"AA", "BB"} and set(cache.sequence[lgg]) == {"flair"}
    tumour = lgg & (cache.label == "glioma")
    assert (cache.masks[tumour].reshape(tumour.sum(), -1).max(axis=1) == 255).all()  # masks cropped alongside
    assert cache.masks[~tumour].max() == 0
    assert indices_of(cache, ["Training/glioma/1.png", "no/such.png"]).tolist() == [i]


def test_a_cache_packed_as_jpeg_keeps_every_field_and_the_crops_within_jpeg_error(
    cache_file, tmp_path: Path, capsys
) -> None:
    """``python -m core cache --from FILE --jpeg 85``: small enough to send to the accelerator machine."""
    from core.cli import main

    _, out = cache_file
    packed = tmp_path / "packed.npz"
    assert main(["cache", "--from", str(out), "--jpeg", "85", "--out", str(packed)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packed"] == "JPEG quality 85" and report["crops"] == 30 and report["bytes"] == packed.stat().st_size
    raw, small = CropCache.load(out), CropCache.load(packed)
    assert small.crops.shape == raw.crops.shape and small.crops.dtype == np.uint8
    assert np.abs(small.crops.astype(int) - raw.crops).mean() < 4.0
    assert np.array_equal(small.masks, raw.masks)  # masks as bits: exact
    for name in ("path", "label", "source", "unit", "institution", "sequence", "plane", "tumour_pixels"):
        assert np.array_equal(getattr(small, name), getattr(raw, name)), name
    assert main(["cache", "--from", str(out), "--jpeg", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "bad_usage" and not (tmp_path / "x.npz").exists()
    assert main(["cache", "--from", str(tmp_path / "none.npz"), "--out", str(tmp_path / "y.npz")]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"
    before = out.read_bytes()
    assert main(["cache", "--from", str(out), "--jpeg", "85", "--out", str(out)]) == 2  # never over the raw cache
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "bad_usage" and out.read_bytes() == before


def test_a_schedule_runs_in_whole_rounds_and_counts_what_it_runs() -> None:
    assert (StandardConfig().rounds, StandardConfig().steps) == (125, 31_250)  # 2 M draws of 64, rounds of 250
    accelerator = StandardConfig(batch_size=512)  # 3,907 steps asked: 16 whole rounds run, and counted
    assert (accelerator.rounds, accelerator.steps) == (16, 4_000)


def test_augmentation_is_the_identity_at_inference_and_varies_training_batches_within_range() -> None:
    augment = batch_augment(AugmentSettings(), seed=3)
    x = np.stack([synthetic_slice(64, tumour=True, seed=s) for s in range(8)]).astype(np.float32)[..., None] / 255
    assert np.array_equal(np.asarray(augment(x, training=False)), x)
    a, b = np.asarray(augment(x, training=True)), np.asarray(augment(x, training=True))
    assert a.shape == x.shape and a.min() >= 0.0 and a.max() <= 1.0
    assert not np.allclose(a, x, atol=0.05) and not np.allclose(a, b, atol=0.05)  # every call draws anew


def test_a_lesion_mask_moves_with_its_image_and_stays_binary() -> None:
    """The segmenter trains on image and mask augmented together: same rotation, scale, shift and flip; the
    intensity changes touch the image alone."""
    image = np.zeros((4, 64, 64, 1), np.float32)
    image[:, 20:30, 36:50] = 1.0  # a bright block, marked as the lesion
    mask = (image > 0.5).astype(np.float32)
    settings = AugmentSettings(skull_removal=0, gamma_log=0, contrast=(1, 1), brightness=0, blur=0, noise=0)
    out = np.asarray(batch_augment(settings, seed=5)(np.concatenate([image, mask], axis=-1), training=True))
    assert out.shape == (4, 64, 64, 2) and set(np.unique(out[..., 1])) <= {0.0, 1.0}
    moved = out[..., 1] > 0.5
    assert not np.array_equal(moved, mask[..., 0] > 0.5)  # it moved
    for k in range(4):  # and it moved with the block: where the mask is, the image is bright
        assert out[k, ..., 0][moved[k]].mean() > 0.8 and out[k, ..., 0][~moved[k]].mean() < 0.1


def test_the_segmenter_draws_lesion_transplants_with_their_masks_as_a_function_of_the_step(cache_file) -> None:
    from core.training.segment import TRANSPLANT, SegmentConfig, draw_batch, lesion_pools

    _, out = cache_file
    cache = CropCache.load(out)
    pools = lesion_pools(cache, np.arange(len(cache)))
    assert len(pools[TRANSPLANT]) == 6  # the generated LGG FLAIR sections with a drawn lesion are the donors
    only = SegmentConfig(batch=12, shares=(0, 0, 0, 0, 1))
    images, masks = draw_batch(cache, pools, only, step=3)
    assert images.shape == masks.shape == (12, 32, 32, 1) and set(np.unique(masks)) <= {0.0, 1.0}
    lesioned = masks.reshape(12, -1).max(axis=1) > 0
    assert lesioned.mean() >= 0.5
    for image, mask in zip(images[lesioned, ..., 0], masks[lesioned, ..., 0], strict=True):
        pixels = np.round(image * 255).astype(np.uint8)
        assert not any(np.array_equal(pixels, crop) for crop in cache.crops)  # a new section, not a cached one
        recipient = min(cache.crops, key=lambda crop: int(np.abs(crop.astype(int) - pixels).sum()))
        changed = np.abs(recipient.astype(int) - pixels) > 20
        assert changed[mask > 0].mean() > changed[mask == 0].mean()  # the blended lesion lies under its mask
    again = draw_batch(cache, pools, only, step=3)
    assert np.array_equal(again[0], images) and np.array_equal(again[1], masks)
    assert draw_batch(cache, pools, SegmentConfig(batch=12, shares=(0, 1, 0, 0, 0)), step=3)[1].max() == 0


def test_skull_removal_keeps_the_inside_of_the_head_and_blanks_the_outside() -> None:
    settings = AugmentSettings(
        rotation_degrees=0,
        scale=(1, 1),
        shift=0,
        skull_removal=1.0,
        gamma_log=0,
        contrast=(1, 1),
        brightness=0,
        blur=0,
        noise=0,
    )
    head = np.zeros((1, 96, 96, 1), np.float32)
    yy, xx = np.mgrid[:96, :96]
    head[0, ..., 0] = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2, 0.5, 0.0)
    out = np.asarray(batch_augment(settings, seed=1)(head, training=True))[0, ..., 0]
    assert out[48, 48] == pytest.approx(0.5, abs=1e-5)  # the centre stays
    assert out[48, 48 + 36] < 1e-5  # a rim of at least 7 px of the head is gone
    assert out[48, 48 + 20] == pytest.approx(0.5, abs=1e-5)  # at most 17 px (and a blur step) are eroded


def test_the_network_standardises_each_image_so_brightness_and_contrast_do_not_change_its_logits() -> None:
    network = build_resnet(32, width=4)
    x = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    logits = keras.ops.convert_to_numpy(network(x, training=False))
    assert logits.shape == (3, 4)
    assert np.allclose(keras.ops.convert_to_numpy(network(0.4 * x + 0.3, training=False)), logits, rtol=0.01, atol=0.01)
    assert network.get_layer("logits") is network.layers[-1]


def test_the_loss_smooths_known_classes_and_asks_only_tumour_for_an_unknown_type() -> None:
    logits = np.array([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, -4.0, 0.0]], np.float32)
    masks = label_masks(["glioma", "tumour"])
    loss = keras.ops.convert_to_numpy(smoothed_allowed_label_nll(masks, logits, smoothing=0.05))
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert loss[0] == pytest.approx(0.95 * -log_p[0, 0] + 0.05 * -log_p[0].mean(), rel=1e-5)
    assert loss[1] == pytest.approx(-np.log(1 - np.exp(log_p[1, 2])), rel=1e-4)


def test_the_sampler_draws_every_stratum_alike_and_is_the_same_for_the_same_key(cache_file) -> None:
    _, out = cache_file
    cache = CropCache.load(out)
    config = StandardConfig(size=32, batch_size=2000)
    groups = strata(cache, np.arange(len(cache)), config)
    keys = {(str(cache.source[g[1][0]]), str(cache.label[g[1][0]])) for g in groups}
    assert ("LGG", "glioma") in keys and ("Web-tumour", "tumour") in keys and len(groups) == 4 + 1 + 2
    masks = label_masks([str(label) for label in cache.label])
    x, y = draw_batch(cache, groups, masks, config, (0, 0))
    x2, _ = draw_batch(cache, groups, masks, config, (0, 0))
    assert x.shape == (2000, 32, 32, 1) and np.array_equal(x, x2)
    unknown = y.sum(axis=1) == 3  # the web-style tumours, at half a stratum's weight
    assert 0.5 / 6.5 - 0.03 < unknown.mean() < 0.5 / 6.5 + 0.03


def test_a_held_out_institution_is_never_trained_on_and_validation_follows_the_split_file(cache_file) -> None:
    _, out = cache_file
    cache = CropCache.load(out)
    bb = "LGG/glioma/TCGA_BB_0002_20000101_1_flair.jpg"  # a validation patient of the institution left out
    split = {"validation": [["Training/notumor/0.png", "notumor"], [bb, "glioma"]], "held_out": []}
    assert len(split_indices(cache, split)["validation"]) == 2
    parts = split_indices(cache, split, ("BB",))
    assert [str(cache.path[i]) for i in parts["validation"]] == ["Training/notumor/0.png"]  # no rule fitted on BB
    assert {str(cache.institution[i]) for i in parts["held_out"]} == {"BB"} and len(parts["held_out"]) == 4
    assert not {str(cache.institution[i]) for i in parts["train"]} & {"BB"}
    assert len(parts["train"]) + len(parts["held_out"]) + 1 == len(cache)


def test_a_paused_run_resumes_to_the_weights_of_an_uninterrupted_one_and_writes_a_loadable_model(
    cache_file, tmp_path: Path
) -> None:
    _, out = cache_file
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps({"validation": [["Training/notumor/0.png", "notumor"], ["Training/glioma/0.png", "glioma"]]})
    )
    # width 8: PyTorch 2.13's CPU kernels corrupt memory training this network at width 4 (seen under
    # KERAS_BACKEND=torch); this test also runs there (tests/test_backends.py)
    config = StandardConfig(size=32, width=8, draws=4 * 3 * 8, batch_size=8, round_steps=3, warmup_steps=2, name="m3")
    train_standard(out, split, tmp_path / "whole", config, "pytest whole")
    paused = train_standard(out, split, tmp_path / "parts", config, "pytest parts", max_minutes=0.0)
    assert paused["status"] == "paused" and paused["round"] == 1
    with pytest.raises(ValueError, match="another run"):
        train_standard(out, split, tmp_path / "parts", replace(config, learning_rate=5e-4), "pytest other")
    resumed = train_standard(out, split, tmp_path / "parts", config, "pytest parts")
    assert [part["after_round"] for part in resumed["training"]["resumed"]] == [1]
    import keras

    weights = [keras.saving.load_model(tmp_path / run / "m3.keras").get_weights() for run in ("whole", "parts")]
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))  # bit-identical weights
    curve = [json.loads(line) for line in (tmp_path / "parts" / "m3.log.jsonl").read_text().splitlines()]
    assert [line["draws"] for line in curve] == [24, 48, 72, 96] and "validation" in curve[-1]
    classifier = Classifier.from_card(tmp_path / "whole" / "m3.json")
    assert classifier.card.input.scaling == "unit" and classifier.card.input.channels == 1
    assert classifier.probabilities(np.zeros((1, 32, 32, 1), np.float32)).shape == (1, 4)


def test_train_lesion_leaves_each_institution_out_scores_it_on_the_raw_slices_and_resumes(
    cache_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m core train-lesion --folds`` on a tiny generated collection (two institutions): first where only
    the cache is (the accelerator): the shipped network and one network per institution left out, saved; then
    where the folders are: each fold scored through the app's path on the raw slices against the drawn masks,
    nothing trained again; a third call finds everything done."""
    from core.model.lesion import Segmenter
    from core.training import segment_run
    from core.training.segment import SegmentConfig

    root, out = cache_file
    monkeypatch.setattr(segment_run, "INSTITUTIONS", ("AA", "BB"))
    config = SegmentConfig(width=8, batch=4, draws=8)
    trained = segment_run.train_lesion(out, None, tmp_path, config, ("AA", "BB"), "pytest")
    assert trained["figures"]["per_fold"] == {} and trained["figures"]["pooled"] is None
    assert sorted(p.name for p in tmp_path.glob("*.keras")) == [
        "btd-lesion.fold-AA.keras", "btd-lesion.fold-BB.keras", "btd-lesion.keras"
    ]  # fmt: skip
    weights = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.keras")}
    monkeypatch.setattr(segment_run, "train_segmenter", lambda *a: pytest.fail("a trained network was trained again"))
    card = segment_run.train_lesion(out, root, tmp_path, config, ("AA", "BB"), "pytest")
    assert sorted(card["figures"]["per_fold"]) == ["AA", "BB"] and card["figures"]["pooled"]["folds"] == ["AA", "BB"]
    rows = [json.loads(line) for line in (tmp_path / "btd-lesion.rows.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {row["fold"] for row in rows} == {"AA", "BB"}  # every LGG section, held out once
    drawn = [row for row in rows if row["drawn"]]
    assert len(drawn) == 6 and all(row["drawn"] == 400 for row in drawn)  # the masks at their own resolution
    pooled = card["figures"]["pooled"]
    assert pooled["hit_rate"]["n"] == 6 and pooled["false_lesions_lgg_tumour_free"]["n"] == 6
    assert pooled["volume_spearman_per_patient"]["n"] == 3
    segmenter = Segmenter.from_card(tmp_path / "btd-lesion.json")  # the weights' hash matches the card
    assert segmenter.crop_probabilities(np.zeros((1, 32, 32, 1), np.float32)).shape == (1, 32, 32)
    again = segment_run.train_lesion(out, root, tmp_path, config, ("AA", "BB"), "pytest")
    assert again["figures"] == card["figures"]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.keras")} == weights
    monkeypatch.undo()  # other settings: the shipped network again, and no fold network of the old ones is kept
    other = segment_run.train_lesion(out, None, tmp_path, replace(config, draws=4), (), "pytest")
    assert other["training"]["config"]["draws"] == 4 and other["figures"]["per_fold"] == {}
    assert [p.name for p in tmp_path.glob("*.keras")] == ["btd-lesion.keras"]
    assert not (tmp_path / "btd-lesion.rows.jsonl").exists()


def test_a_fold_trained_without_an_institution_is_scored_on_it_and_makes_a_row(cache_file, tmp_path: Path) -> None:
    """End to end on the tiny generated collection: ``train-standard --hold-out BB --data`` finishes a card whose
    held-out figures are institution BB's sections only, and the table's row is those figures."""
    root, cache = cache_file
    labels = ("glioma", "meningioma", "notumor", "pituitary")
    validation = [[f"Training/{label}/{i}.png", label] for label in labels for i in (0, 1)]
    validation.append(["LGG/glioma/TCGA_BB_0002_20000101_1_flair.jpg", "glioma"])  # BB's: held out, not validated
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": validation}))
    config = StandardConfig(
        size=32, width=8, draws=48, batch_size=8, round_steps=3, warmup_steps=2, name="fold", hold_out=("BB",)
    )
    fold = train_standard(cache, split, tmp_path / "fold-BB", config, "pytest fold", data_root=root)
    held = fold["metrics"]["held_out"]
    assert held["institutions"] == ["BB"]
    targets = held["per_source"]["LGG"]["targets"]
    assert targets["BB"]["sensitivity"]["n"] == 2 and targets["BB"]["specificity"]["n"] == 2  # BB's four sections
    written = json.loads((tmp_path / "fold-BB" / "fold.split.json").read_text())
    assert len(written["validation"]) == 8 and len(written["held_out"]) == 4  # calibration never saw BB
    assert fold["metrics"]["validation"]["n"] == 8
    assert fold["data"]["folders"] == ["LGG", "Training", "Web-tumour"]  # what the series rule must not refit on
    stages = [layer.name for layer in stage_layers(Classifier.from_card(tmp_path / "fold-BB" / "fold.json").model)]
    assert list(fold["explain"]["localisation_by_layer"]) == stages  # every stage judged, finest first
    assert fold["explain"]["layer"] == stages[-1]  # no LGG tumour in validation to judge by: the last map
    assert held["localisation"]["layer"] == fold["explain"]["layer"] and held["localisation"]["n"] == 2
    card = tmp_path / "model.json"
    card.write_text(json.dumps({"training": {"recipe": "core.training.standard"}}))
    section = collect(card, [tmp_path / "fold-BB" / "fold.json"])
    row = section["per_institution"]["BB"]
    assert row["sensitivity"] == targets["BB"]["sensitivity"] and row["specificity"] == targets["BB"]["specificity"]
    assert row["fold"]["draws"] == 48 and row["fold"]["sha256"] == fold["weights"]["sha256"]


def backbone_card(folder: Path, hold_out: tuple[str, ...] = (), size: int = 32) -> Path:
    """A model-3 network's card as train-standard writes it, reduced to what a lesion decoder reads."""
    from core.model.card import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    build_resnet(size, 8, name="m3").save(folder / "m3.keras")
    card = {
        "name": "m3",
        "version": "3.0.0",
        "input": {"size": size, "channels": 1, "crop": True, "scaling": "unit"},
        "weights": {"file": "m3.keras", "sha256": sha256_file(folder / "m3.keras")},
        "training": {"config": {"hold_out": list(hold_out)}},
    }
    (folder / "m3.json").write_text(json.dumps(card))
    return folder / "m3.json"


def test_a_lesion_decoder_learns_on_a_frozen_backbone_and_keeps_its_weights(cache_file, tmp_path: Path) -> None:
    from core.training.cache import CropCache
    from core.training.segment import SegmentConfig, train_segmenter
    from core.training.segment_run import fold_indices

    _, out = cache_file
    cache = CropCache.load(out)
    card = backbone_card(tmp_path / "m3")
    config = SegmentConfig(width=4, batch=4, draws=8, backbone=str(card))
    network = train_segmenter(cache, fold_indices(cache, None)[0], config, log=lambda _: None)
    output = np.asarray(network(np.zeros((2, 32, 32, 1), np.float32)))
    assert output.shape == (2, 32, 32, 1) and output.min() >= 0.0 and output.max() <= 1.0
    assert {w.path.split("/")[0] for w in network.trainable_weights} <= {
        layer.name for layer in network.layers if layer.name.startswith("decoder_")
    }  # only the decoder learns
    backbone = keras.saving.load_model(card.parent / "m3.keras")
    kept = [layer for layer in backbone.layers if layer.name not in ("features", "logits")]  # the head: not used
    assert sum(len(layer.get_weights()) for layer in kept) > 50
    for layer in kept:  # every backbone weight, batch-normalisation statistics too, as it was
        for before, after in zip(layer.get_weights(), network.get_layer(layer.name).get_weights(), strict=True):
            assert np.array_equal(before, after), layer.name
    assert any(
        not np.allclose(w, 0) for w in network.get_layer("decoder_lateral_0").get_weights()
    )  # a decoder weight that is no longer its zero bias start


def test_a_decoder_may_fine_tune_the_backbones_coarsest_stage_and_nothing_finer(cache_file, tmp_path: Path) -> None:
    from core.training.cache import CropCache
    from core.training.segment import SegmentConfig, train_segmenter
    from core.training.segment_run import fold_indices

    _, out = cache_file
    cache = CropCache.load(out)
    card = backbone_card(tmp_path / "m3")
    config = SegmentConfig(width=4, batch=4, draws=8, backbone=str(card), tune=1)
    network = train_segmenter(cache, fold_indices(cache, None)[0], config, log=lambda _: None)
    backbone = keras.saving.load_model(card.parent / "m3.keras")
    changed, kept = set(), set()
    for layer in backbone.layers:
        if layer.name in ("features", "logits") or not layer.get_weights():
            continue
        after = network.get_layer(layer.name).get_weights()
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), after, strict=True))
        (kept if same else changed).add(layer.name)
    coarse = {
        layer.name
        for layer in backbone.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.output.shape[1] == 1  # 1/32 of the 32-pixel crop
    }
    assert changed and changed <= coarse  # the last stage's convolutions learned, nothing else of the backbone
    norms = {layer.name for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert norms and norms <= kept  # batch normalisation frozen, statistics too
    with pytest.raises(ValueError, match="--tune goes with --backbone"):
        train_segmenter(cache, fold_indices(cache, None)[0], SegmentConfig(draws=4, tune=1), log=lambda _: None)


def test_train_lesion_puts_each_fold_decoder_on_the_backbone_that_left_its_institution_out(
    cache_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.model.lesion import Segmenter
    from core.training import segment_run
    from core.training.segment import SegmentConfig

    root, out = cache_file
    monkeypatch.setattr(segment_run, "INSTITUTIONS", ("AA", "BB"))
    shipped = backbone_card(tmp_path / "m3")
    for institution in ("AA", "BB"):
        backbone_card(tmp_path / f"fold-{institution}", hold_out=(institution,))
    pattern = str(tmp_path / "fold-{fold}" / "m3.json")
    config = SegmentConfig(width=4, batch=4, draws=8, backbone=str(shipped), fold_backbones=pattern)
    card = segment_run.train_lesion(out, root, tmp_path / "lesion", config, ("AA", "BB"), "pytest")
    assert card["training"]["network"].startswith("decoder (16 channels) on the network of m3 3.0.0, frozen;")
    assert sorted(card["figures"]["per_fold"]) == ["AA", "BB"] and card["figures"]["pooled"]["hit_rate"]["n"] == 6
    segmenter = Segmenter.from_card(tmp_path / "lesion" / "btd-lesion.json")  # self-contained: backbone inside
    assert segmenter.crop_probabilities(np.zeros((1, 32, 32, 1), np.float32)).shape == (1, 32, 32)

    def stem(path: Path) -> np.ndarray:  # the first convolution's kernel: the backbone's stem
        model = keras.saving.load_model(path, compile=False)
        return next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)).get_weights()[0]

    fold_aa = stem(tmp_path / "lesion" / "btd-lesion.fold-AA.keras")
    assert np.array_equal(fold_aa, stem(tmp_path / "fold-AA" / "m3.keras"))  # the fold's own backbone
    assert not np.array_equal(fold_aa, stem(tmp_path / "m3" / "m3.keras"))
    assert (
        card["training"]["backbones"]["AA"]
        == json.loads((tmp_path / "fold-AA" / "m3.json").read_text())["weights"]["sha256"]
    )
    backbone_card(tmp_path / "fold-AA", hold_out=("AA",))  # rewritten in place: new weights, same path
    again = segment_run.train_lesion(out, None, tmp_path / "lesion", config, ("AA", "BB"), "pytest")
    assert again["figures"]["per_fold"] == {}  # everything trained again, nothing kept from the old backbone
    assert not np.array_equal(stem(tmp_path / "lesion" / "btd-lesion.fold-AA.keras"), fold_aa)


def test_train_lesion_adds_a_fold_when_its_backbone_exists_and_keeps_those_done(
    cache_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Model 3's leave-one-out runs come one at a time: ``--fold AA`` while only AA's backbone exists, then
    ``--fold BB`` once BB's does, into the same card: nothing trained twice, the pooled figures over both."""
    from core.cli import main
    from core.training import segment, segment_run
    from core.training.segment import SegmentConfig

    root, out = cache_file
    monkeypatch.setattr(segment_run, "INSTITUTIONS", ("AA", "BB"))
    shipped = backbone_card(tmp_path / "m3")
    backbone_card(tmp_path / "fold-AA", hold_out=("AA",))
    pattern = str(tmp_path / "fold-{fold}" / "m3.json")
    config = SegmentConfig(width=4, batch=4, draws=8, backbone=str(shipped), fold_backbones=pattern)
    trained: list[str | None] = []

    def counted(cache, train, config, log, held=None):
        trained.append(held)
        return segment.train_segmenter(cache, train, config, log, held)

    monkeypatch.setattr(segment_run, "train_segmenter", counted)
    first = segment_run.train_lesion(out, root, tmp_path / "lesion", config, ("AA",), "pytest")
    assert trained == [None, "AA"] and first["figures"]["pooled"]["folds"] == ["AA"]
    assert first["figures"]["pooled"] == {**first["figures"]["per_fold"]["AA"], "folds": ["AA"]}
    backbone_card(tmp_path / "fold-BB", hold_out=("BB",))
    card_path = tmp_path / "lesion" / "btd-lesion.json"
    older = json.loads(card_path.read_text())
    del older["training"]["config"]["tune"]  # a card written before --tune existed: it ran with the default
    card_path.write_text(json.dumps(older))
    second = segment_run.train_lesion(out, root, tmp_path / "lesion", config, ("BB",), "pytest")
    assert trained == [None, "AA", "BB"]  # the shipped network and AA's fold kept
    assert second["figures"]["per_fold"]["AA"] == first["figures"]["per_fold"]["AA"]
    assert second["figures"]["pooled"]["folds"] == ["AA", "BB"] and second["figures"]["pooled"]["hit_rate"]["n"] == 6
    assert [second["figures"]["per_fold"][k]["hit_rate"]["n"] for k in ("AA", "BB")] == [4, 2]
    assert sorted(second["training"]["backbones"]) == ["AA", "BB", "shipped"]
    card_before = (tmp_path / "lesion" / "btd-lesion.json").read_text()
    code = main(["train-lesion", "--cache", str(out), "--out", str(tmp_path / "lesion"), "--fold", "XX"])
    error = json.loads(capsys.readouterr().out)
    assert code == 2 and error["error"]["code"] == "bad_input" and "no LGG institution XX" in error["error"]["message"]
    assert (tmp_path / "lesion" / "btd-lesion.json").read_text() == card_before and len(trained) == 3


def test_a_fold_decoder_is_refused_a_backbone_that_saw_its_institution_before_anything_is_trained(
    cache_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.training import segment_run
    from core.training.segment import SegmentConfig

    _, out = cache_file
    monkeypatch.setattr(segment_run, "INSTITUTIONS", ("AA", "BB"))
    shipped = str(backbone_card(tmp_path / "m3"))
    backbone_card(tmp_path / "fold-AA", hold_out=("AA",))
    backbone_card(tmp_path / "fold-BB", hold_out=("AA",))  # trained on BB: no backbone for BB's fold
    small = str(backbone_card(tmp_path / "small", size=64))
    cases = [
        (SegmentConfig(backbone=shipped), "--fold-backbones"),
        (SegmentConfig(backbone=shipped, fold_backbones=str(tmp_path / "fold-{fold}" / "m3.json")), "trained on BB"),
        (SegmentConfig(backbone=small), "not the cache's 32-pixel crop"),
        (SegmentConfig(fold_backbones=str(tmp_path / "fold-{fold}" / "m3.json")), "goes with --backbone"),
    ]
    for config, refusal in cases:
        with pytest.raises(ValueError, match=refusal):
            segment_run.train_lesion(out, None, tmp_path / "lesion", config, ("AA", "BB"), "pytest")
        assert not (tmp_path / "lesion").exists()  # nothing trained, nothing written


def test_fast_runs_skip_the_deterministic_kernels_and_still_resume(cache_file, tmp_path: Path, monkeypatch) -> None:
    from core.training import standard_run

    _, out = cache_file
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": [["Training/notumor/0.png", "notumor"]]}))
    calls: list[str] = []
    monkeypatch.setattr(standard_run, "_deterministic_ops", calls.append)
    config = StandardConfig(size=32, width=8, draws=4 * 3 * 8, batch_size=8, round_steps=3, warmup_steps=2, name="m3")
    paused = train_standard(out, split, tmp_path, config, "fast", max_minutes=0.0, deterministic=False)
    assert paused["status"] == "paused" and calls == []
    card = train_standard(out, split, tmp_path, config, "fast", deterministic=False)
    assert calls == [] and [part["after_round"] for part in card["training"]["resumed"]] == [1]
    train_standard(out, split, tmp_path / "exact", config, "exact", max_minutes=0.0)
    assert len(calls) == 1  # the default: deterministic kernels


def test_a_rounds_loss_on_the_learning_curve_is_the_mean_over_its_batches() -> None:
    """``train_on_batch`` resets Keras' loss tracker on every call, so the round averages the batches' losses."""
    from core.training.standard_run import _train_round

    class Trainer:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def train_on_batch(self, x: int, y: int) -> float:
            self.seen.append(x)
            return float(x + y)

    trainer = Trainer()
    loss, seconds = _train_round(trainer, iter([(1, 0), (2, 0), (6, 0), (9, 9)]), 3)
    assert loss == pytest.approx(3.0) and trainer.seen == [1, 2, 6] and seconds >= 0


def test_an_annealed_branch_ends_the_rate_at_zero_resumes_and_leaves_the_run_as_it_was(
    cache_file, tmp_path: Path
) -> None:
    """``train-standard --anneal 2 --branch DIR`` after two of four rounds: a finished model whose learning rate
    fell linearly from the schedule's value to zero, the same when paused and resumed; the run then goes on to the
    weights of a run that was never branched."""
    from core.training.standard_run import Branch

    _, out = cache_file
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": [["Training/notumor/0.png", "notumor"]]}))
    config = StandardConfig(size=32, width=8, draws=4 * 3 * 8, batch_size=8, round_steps=3, warmup_steps=2, name="m3")
    with pytest.raises(FileNotFoundError, match="no checkpoint to branch from"):
        train_standard(out, split, tmp_path / "run", config, "b", anneal=Branch(tmp_path / "none", 2))
    train_standard(out, split, tmp_path / "run", config, "run", max_minutes=0.0)
    train_standard(out, split, tmp_path / "run", config, "run", max_minutes=0.0)  # two rounds of four
    branch = train_standard(out, split, tmp_path / "run", config, "b", anneal=Branch(tmp_path / "whole", 2))
    paused = train_standard(
        out, split, tmp_path / "run", config, "b", max_minutes=0.0, anneal=Branch(tmp_path / "parts", 2)
    )
    assert paused["status"] == "paused" and paused["round"] == 3 and paused["rounds"] == 4
    with pytest.raises(ValueError, match="branch of 2 rounds"):
        train_standard(out, split, tmp_path / "run", config, "b", anneal=Branch(tmp_path / "parts", 3))
    resumed = train_standard(out, split, tmp_path / "run", config, "b", anneal=Branch(tmp_path / "parts", 2))
    assert branch["training"]["draws"] == resumed["training"]["draws"] == 4 * 3 * 8
    assert "branched after round 2 of 4" in branch["training"]["schedule"]
    weights = [keras.saving.load_model(tmp_path / d / "m3.keras").get_weights() for d in ("whole", "parts")]
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
    curve = [json.loads(line) for line in (tmp_path / "whole" / "m3.log.jsonl").read_text().splitlines()]
    rates = [line["learning_rate"] for line in curve]
    at_branch = [json.loads(line) for line in (tmp_path / "run" / "m3.log.jsonl").read_text().splitlines()][-1]
    assert at_branch["round"] == 2 and [line["round"] for line in curve] == [3, 4]
    assert rates == [pytest.approx(at_branch["learning_rate"] / 2), 0.0]  # halfway down, then zero
    with pytest.raises(ValueError, match="another folder"):
        train_standard(out, split, tmp_path / "run", config, "b", anneal=Branch(tmp_path / "run", 2))
    run = train_standard(out, split, tmp_path / "run", config, "run")
    never = train_standard(out, split, tmp_path / "never", config, "never")
    finished = [keras.saving.load_model(tmp_path / d / "m3.keras").get_weights() for d in ("run", "never")]
    assert all(np.array_equal(a, b) for a, b in zip(*finished, strict=True))
    assert run["training"]["draws"] == never["training"]["draws"] and "branched" not in run["training"]["schedule"]
    main_curve = [json.loads(line) for line in (tmp_path / "run" / "m3.log.jsonl").read_text().splitlines()]
    assert main_curve[2]["learning_rate"] != pytest.approx(rates[0])  # round 3: the run's own cosine
    stale = tmp_path / "stale"  # a branch stopped before its first round ended, and the run went on meanwhile
    stale.mkdir()
    (stale / "branch.json").write_text(json.dumps({"after_round": 2, "rounds": 2}))
    with pytest.raises(ValueError, match="went on to round 4 before this branch ran a round from round 2"):
        train_standard(out, split, tmp_path / "run", config, "b", anneal=Branch(stale, 2))
    assert not (stale / "branch.json").exists()  # the same command now starts afresh, and the run is finished:
    with pytest.raises(ValueError, match="finished its schedule"):
        train_standard(out, split, tmp_path / "run", config, "b", anneal=Branch(stale, 2))


def test_a_mirrored_copy_of_a_validation_crop_is_held_out_of_training() -> None:
    """The shipped split joined twins as stored only: half the public collection's validation files had their
    left-right mirror in training, which random flips made seen. Twins of sources that name a patient are that
    patient's unit already and left to the split."""
    import cv2

    from core.imaging.phantoms import synthetic_slice

    rng = np.random.default_rng(0)
    scan = cv2.resize(synthetic_slice(256, tumour=True, seed=3), (32, 32))
    scan[4:12, 2:9] = 255  # off-centre: its mirror is not itself
    crops = np.stack([scan, scan[:, ::-1], (rng.random((32, 32)) * 255).astype(np.uint8), scan[:, ::-1]])
    text = lambda *values: np.array(values, dtype=object)  # noqa: E731
    cache = CropCache(
        crops=crops,
        masks=np.zeros_like(crops),
        path=text("Training/glioma/a.png", "Training/glioma/b.png", "Training/glioma/c.png", "LGG/glioma/d.png"),
        label=text("glioma", "glioma", "glioma", "glioma"),
        source=text("Training", "Training", "Training", "LGG"),
        unit=text("", "", "", "TCGA_AA_0001"),
        institution=text("", "", "", "AA"),
        sequence=text("", "", "", "flair"),
        plane=text("", "", "", "axial"),
        tumour_pixels=np.array([-1, -1, -1, 400]),
        rejected={},
    )
    split = {"validation": [["Training/glioma/a.png", "glioma"]], "held_out": []}
    assert list(split_indices(cache, split)["train"]) == [1, 2, 3]  # as the shipped runs drew it
    parts = split_indices(cache, split, twin_threshold=0.97)
    assert list(parts["train"]) == [2, 3] and list(parts["twins"]) == [1] and not len(parts["held_out"])
