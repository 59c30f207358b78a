"""Model 3's network and recipe: a plain ResNet-18 layout and a generic augmentation, nothing specific to this project.

- Network (:func:`build_resnet`): He et al.'s ResNet-18 (7 x 7 stem, max-pool, four stages of two basic blocks,
  global average pooling, one dense layer giving 4 logits), built from Keras layers with a width multiplier
  (``width`` 64 is the published network, 11 M parameters; 32 keeps a quarter of the arithmetic for 2 CPU cores).
  Its first layer standardises each image (subtract the mean, divide by the standard deviation: a
  ``LayerNormalization`` over the whole image without learned scale), so the app's input is the crop at ``x / 255``
  and the standardisation lives in one place, the saved model, for training and inference alike.
- Augmentation (:class:`BatchAugment`): on whole batches with Keras ops (one graph, any backend): rotation +-17 deg,
  scale 0.85-1.15, shift +-8 %, horizontal flip; skull removal with p 0.3 (the head mask, a smoothed image > 0.08,
  eroded by 7-17 px; everything outside set to 0); gamma exp(U(-0.5, 0.5)); contrast x U(0.8, 1.2), brightness
  +-0.05; a 3 x 3 blur with p 0.2; Gaussian noise of sigma up to 0.03. Active only when training.
- Loss (:func:`smoothed_allowed_label_nll`): softmax cross-entropy with label smoothing 0.05 for a known class;
  -log(1 - P(no tumour)) for a tumour of unknown type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.training.config import CLASSES


@dataclass(frozen=True)
class AugmentSettings:
    rotation_degrees: float = 17.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.08
    skull_removal: float = 0.3
    skull_threshold: float = 0.08
    erosion: tuple[int, int] = (7, 17)
    gamma_log: float = 0.5
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.05
    blur: float = 0.2
    noise: float = 0.03


def build_resnet(size: int, width: int = 32, classes: int = len(CLASSES), name: str = "btd-resnet") -> Any:
    """ResNet-18 layout on a (size, size, 1) image in [0, 1], ending in ``classes`` logits (layer ``logits``)."""
    import keras
    from keras import layers

    def conv_bn(x: Any, filters: int, kernel: int, stride: int = 1, relu: bool = True) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        return layers.ReLU()(x) if relu else x

    def block(x: Any, filters: int, stride: int) -> Any:
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = conv_bn(x, filters, 1, stride, relu=False)
        y = conv_bn(x, filters, 3, stride)
        y = conv_bn(y, filters, 3, relu=False)
        return layers.ReLU()(layers.Add()([shortcut, y]))

    inputs = keras.Input((size, size, 1), name="scan")
    x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-4, name="standardise")(inputs)
    x = conv_bn(x, width, 7, 2)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage in range(4):
        for index in range(2):
            x = block(x, width * 2**stage, 2 if stage and not index else 1)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _shifted(x: Any, axis: int) -> tuple[Any, Any]:
    """``x`` moved one pixel back and forth along ``axis`` (1: rows, 2: columns), edges repeated."""
    from keras import ops

    if axis == 1:
        return ops.concatenate([x[:, :1], x[:, :-1]], axis=1), ops.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    return ops.concatenate([x[:, :, :1], x[:, :, :-1]], axis=2), ops.concatenate([x[:, :, 1:], x[:, :, -1:]], axis=2)


def _neighbourhood(x: Any, reduce: Any) -> Any:
    """``reduce`` (``ops.minimum``: erosion) over each pixel's 3 x 3 square, as two 1-D passes of shifted copies
    (pooling with stride 1 on one channel is 100 times slower on TensorFlow's CPU kernels)."""
    for axis in (1, 2):
        before, after = _shifted(x, axis)
        x = reduce(reduce(before, x), after)
    return x


def _binomial_blur(x: Any) -> Any:
    """The 3 x 3 binomial blur ([1, 2, 1] / 4 along each axis), edges repeated."""
    for axis in (1, 2):
        before, after = _shifted(x, axis)
        x = (before + 2.0 * x + after) * 0.25
    return x


def _batch_augment_class() -> Any:
    import keras
    from keras import ops

    class BatchAugment(keras.layers.Layer):
        """The recipe's augmentation of a (N, H, W, 1) batch in [0, 1]; the identity unless ``training``."""

        def __init__(self, settings: AugmentSettings = AugmentSettings(), seed: int = 0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.settings = settings
            self.seed_generator = keras.random.SeedGenerator(seed)

        def _uniform(self, n: Any, low: float, high: float) -> Any:
            return keras.random.uniform((n,), low, high, seed=self.seed_generator)

        def _chance(self, n: Any, p: float) -> Any:
            return ops.reshape(ops.cast(self._uniform(n, 0.0, 1.0) < p, "float32"), (-1, 1, 1, 1))

        def call(self, images: Any, training: bool | None = None) -> Any:
            """A second channel, when given, is a lesion mask: it moves with the image (rotation, scale, shift,
            flip) and keeps 0/1 values; the skull removal and the intensity changes touch the image alone."""
            if not training:
                return images
            s = self.settings
            n = ops.shape(images)[0]
            height, width = int(images.shape[1]), int(images.shape[2])
            # one affine map per image: output pixel -> input pixel (rotation and scale about the centre, shift)
            angle = self._uniform(n, -s.rotation_degrees, s.rotation_degrees) * (math.pi / 180)
            scale = self._uniform(n, *s.scale)
            tx = self._uniform(n, -s.shift, s.shift) * width
            ty = self._uniform(n, -s.shift, s.shift) * height
            cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
            cx, cy = (width - 1) / 2, (height - 1) / 2
            a2 = cx - cos * (cx + tx) - sin * (cy + ty)
            b2 = cy + sin * (cx + tx) - cos * (cy + ty)
            zeros = ops.zeros_like(cos)
            transform = ops.stack([cos, sin, a2, -sin, cos, b2, zeros, zeros], axis=1)
            x = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="constant")
            x = ops.where(self._chance(n, 0.5) > 0, ops.flip(x, axis=2), x)
            x = ops.clip(x, 0.0, 1.0)
            mask = x[..., 1:] if int(images.shape[-1]) > 1 else None
            x = x[..., :1]
            # skull removal: the head mask at half resolution, eroded one (half-resolution) pixel at a time;
            # keep each pixel whose depth reaches the drawn radius (17 full-resolution steps cost 8 times more)
            head = _binomial_blur(_binomial_blur(x))
            half = ops.mean(ops.reshape(head, (-1, height // 2, 2, width // 2, 2, 1)), axis=(2, 4))
            eroded = ops.cast(half > s.skull_threshold, "float32")
            depth = ops.zeros_like(eroded)
            for _ in range((s.erosion[1] + 1) // 2):
                eroded = _neighbourhood(eroded, ops.minimum)
                depth = depth + eroded
            depth = ops.repeat(ops.repeat(depth, 2, axis=1), 2, axis=2)
            radius = ops.reshape(self._uniform(n, s.erosion[0], s.erosion[1]), (-1, 1, 1, 1))
            brain = ops.cast(2.0 * depth >= radius, "float32")
            strip = self._chance(n, s.skull_removal)
            x = x * (1.0 - strip) + x * brain * strip
            # intensities
            gamma = ops.reshape(ops.exp(self._uniform(n, -s.gamma_log, s.gamma_log)), (-1, 1, 1, 1))
            x = ops.power(ops.maximum(x, 1e-6), gamma)
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            contrast = ops.reshape(self._uniform(n, *s.contrast), (-1, 1, 1, 1))
            brightness = ops.reshape(self._uniform(n, -s.brightness, s.brightness), (-1, 1, 1, 1))
            x = (x - mean) * contrast + mean + brightness
            blurred = _binomial_blur(x)
            blur = self._chance(n, s.blur)
            x = x * (1.0 - blur) + blurred * blur
            sigma = ops.reshape(self._uniform(n, 0.0, s.noise), (-1, 1, 1, 1))
            x = ops.clip(x + sigma * keras.random.normal(ops.shape(x), seed=self.seed_generator), 0.0, 1.0)
            return x if mask is None else ops.concatenate([x, ops.cast(mask > 0.5, "float32")], axis=-1)

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape

    return BatchAugment


def batch_augment(settings: AugmentSettings = AugmentSettings(), seed: int = 0) -> Any:
    """A :class:`BatchAugment` layer (built lazily so that importing this module does not import Keras)."""
    return _batch_augment_class()(settings, seed, name="augment")


def smoothed_allowed_label_nll(masks: Any, logits: Any, smoothing: float = 0.05) -> Any:
    """Per-sample loss. ``masks``: (N, 4) allowed labels (one-hot for a known class; every tumour class for a
    tumour of unknown type). Known class: cross-entropy against the one-hot smoothed by ``smoothing``; unknown
    type: -log P(allowed set) = -log(1 - P(no tumour)), unsmoothed."""
    from keras import ops

    log_p = ops.log_softmax(logits, axis=-1)
    masks = ops.cast(ops.convert_to_tensor(masks), log_p.dtype)
    allowed = -ops.logsumexp(log_p + (masks - 1.0) * 1e4, axis=-1)
    known = ops.cast(ops.sum(masks, axis=-1) < 1.5, log_p.dtype)
    uniform = -ops.mean(log_p, axis=-1)
    smoothed = (1.0 - smoothing) * allowed + smoothing * uniform
    return known * smoothed + (1.0 - known) * allowed
