"""The lesion segmenter: a small U-Net on the brain crop, trained on the LGG hand-drawn FLAIR-abnormality masks.

- Network, one of two (:func:`segmenter_network`):
  - :func:`build_unet`: Ronneberger et al.'s U-Net layout, small: four levels of two 3 x 3 convolutions
    (batch-normalised, ReLU) with ``width`` x 1, 2, 4, 8 filters, max-pooling down and transposed convolutions up
    with skip connections, one sigmoid output per pixel. Its first layer standardises each image exactly as model
    3's does, so the app feeds the crop at ``x / 255`` (:func:`core.model.preprocess.scale_intensities`, "unit");
  - :func:`build_decoder` (``backbone``): a trained model-3 network, frozen, whose five resolutions (1/2 to 1/32 of
    the crop) a small top-down decoder merges (feature-pyramid style: 1 x 1 lateral convolutions, upsampling,
    3 x 3 convolutions with ``4 x width`` filters) into one sigmoid output per pixel. Only the decoder learns (or,
    with ``tune``, the convolutions of the backbone's coarsest resolutions too), so a draw costs a fraction of the
    U-Net's, and it starts from features that already tell tumour from brain. A fold
    left-out institution needs a backbone that never saw it either (``fold_backbones``: model 3's own LOIO folds),
    checked against the backbone's card.
- Data: every LGG slice of the training institutions (all three sequences: the FLAIR mask applies to the
  co-registered T1 and T1c sections too), with its mask; the tumour-free sections of those patients, Normal-heads
  and the Training collection's tumour-free scans with empty masks; and lesion transplants: a drawn FLAIR or T1c
  lesion blended into one of those tumour-free sections (:mod:`core.training.transplants`), with its mask. Scans
  of a tumour without a mask (Training's glioma, meningioma, pituitary; Web-tumour) are left out: nobody drew where
  their tumour is.
- Augmentation: model 3's recipe (:class:`core.training.standard.BatchAugment`) on image and mask together; the
  mask moves with the image and keeps 0/1 values.
- Loss: binary cross-entropy plus the soft Dice loss over the batch (empty masks count through the cross-entropy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.training.cache import CropCache
from core.training.transplants import crop_donor, transplant_with_mask


@dataclass(frozen=True)
class SegmentConfig:
    width: int = 16
    batch: int = 16
    draws: int = 48_000
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # how often each kind of section is drawn: LGG with a mask, LGG without, Normal-heads, Training's no tumour, and
    # a drawn FLAIR or T1c lesion transplanted into a tumour-free section of the last three kinds
    shares: tuple[float, float, float, float, float] = (0.4, 0.15, 0.15, 0.15, 0.15)
    backbone: str = ""  # a model-3 card: a decoder on its network (frozen but for ``tune``) instead of a U-Net
    fold_backbones: str = ""  # each fold's backbone card, "{fold}" standing for the institution it leaves out
    tune: int = 0  # a decoder: the backbone's coarsest resolutions whose convolutions learn too (0: all frozen)


def build_unet(size: int, width: int = 16, name: str = "btd-lesion") -> Any:
    """U-Net on a (size, size, 1) crop in [0, 1]; outputs (size, size, 1) lesion probabilities (layer ``lesion``)."""
    import keras
    from keras import layers

    def twice(x: Any, filters: int) -> Any:
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input((size, size, 1), name="scan")
    x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-4, name="standardise")(inputs)
    skips = []
    for level in range(3):
        x = twice(x, width * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = twice(x, width * 8)
    for level in reversed(range(3)):
        x = layers.Conv2DTranspose(width * 2**level, 2, strides=2, padding="same")(x)
        x = twice(layers.Concatenate()([x, skips[level]]), width * 2**level)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="lesion")(x)
    return keras.Model(inputs, outputs, name=name)


def build_decoder(backbone: Any, channels: int = 64, name: str = "btd-lesion", tune: int = 0) -> Any:
    """A lesion decoder on ``backbone`` (a model-3 network, frozen here but for the convolutions of its ``tune``
    coarsest resolutions, 1/32 first; batch normalisation stays frozen, in inference mode): its last ReLU output
    at each of the five resolutions 1/2 ... 1/32 of the crop, merged top-down, then upsampled to the crop:
    (size, size, 1) lesion probabilities (layer ``lesion``)."""
    import keras
    from keras import layers

    size = int(backbone.input.shape[1])
    last: dict[int, Any] = {}
    for layer in backbone.layers:
        coarse = len(layer.output.shape) == 4 and int(layer.output.shape[1]) <= size // 2 ** (6 - tune)
        layer.trainable = tune > 0 and coarse and isinstance(layer, layers.Conv2D)
        if isinstance(layer, layers.ReLU):
            last[int(layer.output.shape[1])] = layer.output
    levels = [size // 2**k for k in range(5, 0, -1)]  # coarsest first
    if any(level not in last for level in levels):
        raise ValueError(f"the backbone has no ReLU output at each of {levels} pixels: not a model-3 network")
    x = None
    for k, level in enumerate(levels):
        lateral = layers.Conv2D(channels, 1, name=f"decoder_lateral_{k}")(last[level])
        if x is not None:
            x = layers.Add(name=f"decoder_add_{k}")([layers.UpSampling2D(2, name=f"decoder_up_{k}")(x), lateral])
        else:
            x = lateral
        if level >= size // 8:  # the finer levels refine the outline
            x = layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"decoder_conv_{k}")(x)
            x = layers.ReLU(name=f"decoder_relu_{k}")(layers.BatchNormalization(name=f"decoder_bn_{k}")(x))
    x = layers.Conv2D(1, 1, name="decoder_logit")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="decoder_full")(x)
    outputs = layers.Activation("sigmoid", name="lesion")(x)
    return keras.Model(backbone.input, outputs, name=name)


def backbone_card(config: SegmentConfig, fold: str | None) -> Path | None:
    """The card of the backbone for the shipped network (``fold`` None) or for a fold; None: a U-Net."""
    if config.fold_backbones and not config.backbone:
        raise ValueError("--fold-backbones goes with --backbone (the shipped network's backbone)")
    if not config.backbone:
        return None
    if fold is None:
        return Path(config.backbone)
    if "{fold}" not in config.fold_backbones:
        raise ValueError(
            "a fold's decoder needs a backbone that never saw the institution it is scored on: give "
            "--fold-backbones with {fold} in the path (model 3's leave-one-institution-out runs)"
        )
    return Path(config.fold_backbones.format(fold=fold))


def check_backbone(card_path: Path, size: int, fold: str | None) -> str:
    """The backbone's weights hash, after its card showed it fits: the cache's crop size, model 3's input, and the
    fold's institution left out of its training (:func:`core.training.loio.left_out`)."""
    from core.training.loio import left_out

    raw = json.loads(card_path.read_text())
    given = raw.get("input", {})
    if given.get("size") != size or given.get("scaling") != "unit" or given.get("channels") != 1:
        raise ValueError(f"{card_path}: its input ({given}) is not the cache's {size}-pixel crop at x / 255")
    if fold is not None and fold not in left_out(raw):
        raise ValueError(f"{card_path}: its network was trained on {fold}, the institution this fold is scored on")
    return str(raw["weights"]["sha256"])


def load_backbone(card_path: Path, size: int, fold: str | None) -> Any:
    """The backbone's network (:func:`check_backbone`, then the weights checked against their hash by
    :func:`core.model.classifier.load_checked_model`)."""
    from core.model.classifier import load_checked_model

    sha256 = check_backbone(card_path, size, fold)
    weights = json.loads(card_path.read_text())["weights"]["file"]
    return load_checked_model(card_path.parent / weights, sha256, card_path.name)


def check_tune(config: SegmentConfig) -> None:
    if config.tune and not config.backbone:
        raise ValueError("--tune goes with --backbone (it fine-tunes the backbone's coarsest resolutions)")
    if not 0 <= config.tune <= 5:
        raise ValueError(f"--tune {config.tune}: from 0 (a frozen backbone) to 5 (every resolution learns)")


def segmenter_network(config: SegmentConfig, size: int, fold: str | None = None) -> Any:
    """A fresh U-Net, or a fresh decoder on the backbone that ``config`` names for ``fold``."""
    check_tune(config)
    card = backbone_card(config, fold)
    if card is None:
        return build_unet(size, config.width)
    return build_decoder(load_backbone(card, size, fold), 4 * config.width, tune=config.tune)


def dice_bce_loss(truth: Any, predicted: Any) -> Any:
    """Binary cross-entropy plus (1 - soft Dice) over the whole batch."""
    from keras import ops

    predicted = ops.clip(predicted, 1e-6, 1.0 - 1e-6)
    bce = -ops.mean(truth * ops.log(predicted) + (1.0 - truth) * ops.log(1.0 - predicted))
    overlap = ops.sum(truth * predicted)
    dice = (2.0 * overlap + 1.0) / (ops.sum(truth) + ops.sum(predicted) + 1.0)
    return bce + (1.0 - dice)


TRANSPLANT = 4  # the kind drawn as a lesion transplant (:attr:`SegmentConfig.shares`)


def lesion_pools(cache: CropCache, indices: np.ndarray) -> list[np.ndarray]:
    """The kinds of section among ``indices``, in :attr:`SegmentConfig.shares` order; the transplants' pool holds
    the donors (LGG FLAIR and T1c sections with a mask of at least 0.5 % of the crop), the recipients being the
    tumour-free kinds."""
    source, label, sequence = cache.source[indices], cache.label[indices], cache.sequence[indices]
    area = (cache.masks[indices] > 0).reshape(len(indices), -1).sum(axis=1)
    lgg = source == "LGG"
    return [
        indices[lgg & (area > 0)],
        indices[lgg & (area == 0) & (label == "notumor")],
        indices[source == "Normal-heads"],
        indices[(source == "Training") & (label == "notumor")],
        indices[lgg & np.isin(sequence, ["flair", "t1c"]) & (area >= 0.005 * cache.crops[0].size)],
    ]


def _transplanted(cache: CropCache, pools: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A tumour-free crop with a donor's lesion blended in, and the lesion's mask (up to three tries; else the
    recipient as it is, with no lesion)."""
    recipients = np.concatenate(pools[1:TRANSPLANT])
    crop = cache.crops[recipients[rng.integers(len(recipients))]]
    for _ in range(3):
        given = pools[TRANSPLANT][rng.integers(len(pools[TRANSPLANT]))]
        donor = crop_donor(cache.crops[given], cache.masks[given], min_pixels=1)
        done = transplant_with_mask(crop, donor, rng) if donor is not None else None
        if done is not None:
            return done
    return crop, np.zeros_like(crop)


def draw_batch(
    cache: CropCache, pools: list[np.ndarray], config: SegmentConfig, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step``: a function of the step alone (a resumed or repeated run draws the same batches)."""
    rng = np.random.default_rng((config.seed, step))
    present = [len(pool) > 0 for pool in pools]  # a kind the data lacks is not drawn
    present[TRANSPLANT] = present[TRANSPLANT] and any(present[1:TRANSPLANT])
    shares = np.asarray(config.shares) * present
    if not shares.sum():
        raise ValueError("no section to train the lesion segmenter on (no LGG, Normal-heads or tumour-free scans)")
    images, masks = [], []
    for kind in rng.choice(len(pools), size=config.batch, p=shares / shares.sum()):
        if kind == TRANSPLANT:
            image, mask = _transplanted(cache, pools, rng)
        else:
            chosen = pools[kind][rng.integers(len(pools[kind]))]
            image, mask = cache.crops[chosen], cache.masks[chosen]
        images.append(image)
        masks.append(mask > 0)
    return np.stack(images).astype(np.float32)[..., None] / 255.0, np.stack(masks).astype(np.float32)[..., None]


def train_segmenter(
    cache: CropCache, indices: np.ndarray, config: SegmentConfig, log: Any = print, fold: str | None = None
) -> Any:
    """Train the segmenter (:func:`segmenter_network`; ``fold``: the institution left out, for its backbone) on the
    sections ``indices`` of ``cache`` for ``config.draws`` draws; returns the network."""
    import keras

    from core.training.standard import batch_augment

    keras.utils.set_random_seed(config.seed)
    size = int(cache.crops.shape[1])
    network = segmenter_network(config, size, fold)
    steps = max(1, config.draws // config.batch)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate * 0.1, steps, warmup_target=config.learning_rate, warmup_steps=min(200, steps // 10)
    )
    network.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss=dice_bce_loss,
        jit_compile=False,
    )
    augment = batch_augment(seed=config.seed)
    pools = lesion_pools(cache, indices)
    running = None
    for step in range(steps):
        images, masks = draw_batch(cache, pools, config, step)
        both = keras.ops.convert_to_numpy(augment(np.concatenate([images, masks], axis=-1), training=True))
        loss = float(network.train_on_batch(both[..., :1], both[..., 1:]))
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {running:.4f}")
    return network
