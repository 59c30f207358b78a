"""Make the model-3 network that ``tests/test_backends.py`` loads: trained and saved by Keras on PyTorch.

Run from the repository root in an environment with PyTorch and Keras but no TensorFlow (the accelerator machine
has that; here: ``pip install torch==2.13.0`` and requirements.txt without tensorflow-cpu in another venv):

    KERAS_BACKEND=torch PYTHONPATH=. python tests/data/torch_backend/make.py

It trains ``python -m core train-standard``'s recipe on generated slices (nothing from ../shared), writes the model,
its card and the logits PyTorch gives on :func:`inputs` (50 generated slices, cropped and resized as the app does).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def inputs(size: int) -> np.ndarray:
    """The 50 model inputs both backends are compared on: the app's crop and resize of generated slices."""
    from core.imaging.phantoms import synthetic_slice
    from core.model.preprocess import InputSpec, to_model_input
    from core.model.roi import find_brain

    spec = InputSpec(size, channels=1, scaling="unit")
    slices = [synthetic_slice(96 + 8 * (i % 5), tumour=i % 2 == 0, seed=700 + i) for i in range(50)]
    return np.stack([to_model_input(pixels, find_brain(pixels).box, spec) for pixels in slices])


def main() -> None:
    import keras
    import torch

    from core.model.classifier import Classifier
    from core.training.cache import build_cache
    from core.training.standard_run import StandardConfig, train_standard
    from tests.test_standard import make_root

    assert keras.backend.backend() == "torch", "run with KERAS_BACKEND=torch"
    with tempfile.TemporaryDirectory() as tmp:
        root = make_root(Path(tmp) / "data")
        cache = build_cache(root, size=32, workers=1, log=lambda _: None)
        cache.save(Path(tmp) / "cache.npz")
        split = Path(tmp) / "split.json"
        split.write_text(json.dumps({"validation": [["Training/notumor/0.png", "notumor"]]}))
        config = StandardConfig(size=32, width=8, draws=96, batch_size=8, round_steps=3, warmup_steps=2, name="m3")
        train_standard(Path(tmp) / "cache.npz", split, Path(tmp) / "out", config, "tests/data/torch_backend/make.py")
        for name in ("m3.keras", "m3.json", "m3.split.json"):
            shutil.copy(Path(tmp) / "out" / name, HERE / name)
    classifier = Classifier.from_card(HERE / "m3.json")
    raw, _ = classifier.scores(inputs(32))
    record = {"backend": f"keras {keras.__version__} on torch {torch.__version__}", "logits": raw.tolist()}
    (HERE / "logits.json").write_text(json.dumps(record))
    print(json.dumps({"wrote": str(HERE), "backend": record["backend"]}), file=sys.stderr)


if __name__ == "__main__":
    main()
