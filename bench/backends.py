"""Keras on TensorFlow (this machine) against Keras on PyTorch (the accelerator machine): same logits, and the
training step's speed on each.

    KERAS_BACKEND=torch PYTHON bench/backends.py logits --model CARD --data ROOT > torch.json   # where PyTorch is
    .venv/bin/python bench/backends.py logits --model CARD --data ROOT > tf.json
    .venv/bin/python bench/backends.py compare tf.json torch.json
    [KERAS_BACKEND=torch PYTHON] bench/backends.py speed [--width 32] [--size 128] [--batch 64] [--steps 20]
        [--deterministic]

``logits`` prints the raw outputs of a card's model on the first ``--n`` (50) validation images of its split, read,
cropped and resized by the app's own code; ``compare`` prints their largest absolute difference (the target is
1e-3); ``speed`` times model 3's training step (augmentation, forward, loss, backward, AdamW) on generated batches
and prints draws per second. Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def backend() -> str:
    import keras

    name = keras.backend.backend()
    engine = __import__("torch" if name == "torch" else "tensorflow")
    return f"keras {keras.__version__} on {name} {engine.__version__}"


def logits(card: Path, root: Path, n: int) -> dict:
    from core.evaluation.splits import read_split, split_file_of
    from core.imaging import read_scan_file
    from core.model.classifier import Classifier
    from core.model.preprocess import to_model_input
    from core.model.roi import find_brain

    classifier = Classifier.from_card(card)
    batch = []
    for _, path in read_split(split_file_of(card), root)[:n]:
        pixels = read_scan_file(path).pixels
        batch.append(to_model_input(pixels, find_brain(pixels).box, classifier.card.input))
    raw, _ = classifier.scores(np.stack(batch))
    return {"backend": backend(), "model": classifier.card.version, "images": len(batch), "logits": raw.tolist()}


def compare(first: Path, second: Path) -> dict:
    a, b = (json.loads(path.read_text()) for path in (first, second))
    difference = np.abs(np.asarray(a["logits"]) - np.asarray(b["logits"]))
    return {
        "backends": [a["backend"], b["backend"]],
        "model": a["model"],
        "images": a["images"],
        "max_abs_difference": float(difference.max()),
        "within_1e-3": bool(difference.max() <= 1e-3),
    }


def speed(width: int, size: int, batch: int, steps: int, deterministic: bool) -> dict:
    import keras

    from core.evaluation.metrics import machine
    from core.training.standard_run import StandardConfig, _deterministic_ops, build_trainer

    if deterministic:  # the kernels train-standard uses without --fast
        _deterministic_ops(keras.backend.backend())
    config = StandardConfig(size=size, width=width, batch_size=batch, draws=batch * (steps + 2))
    _, trainer = build_trainer(config)
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 1)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, batch)]
    trainer.train_on_batch(x, y)  # build and trace
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_on_batch(x, y)
    seconds = time.perf_counter() - started
    return {
        "backend": backend(),
        "machine": machine(),
        "width": width,
        "size": size,
        "batch": batch,
        "deterministic": deterministic,
        "draws_per_second": round(steps * batch / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    one = verbs.add_parser("logits")
    one.add_argument("--model", required=True)
    one.add_argument("--data", default="../shared/data/brain-mri")
    one.add_argument("--n", type=int, default=50)
    two = verbs.add_parser("compare")
    two.add_argument("files", nargs=2)
    fast = verbs.add_parser("speed")
    fast.add_argument("--width", type=int, default=32)
    fast.add_argument("--size", type=int, default=128)
    fast.add_argument("--batch", type=int, default=64)
    fast.add_argument("--steps", type=int, default=20)
    fast.add_argument("--deterministic", action="store_true", help="train-standard's kernels without --fast")
    args = parser.parse_args()
    if args.verb == "logits":
        report = logits(Path(args.model), Path(args.data), args.n)
    elif args.verb == "compare":
        report = compare(*(Path(f) for f in args.files))
    else:
        report = speed(args.width, args.size, args.batch, args.steps, args.deterministic)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
