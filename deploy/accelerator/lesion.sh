#!/usr/bin/env bash
# The lesion segmenter on the accelerator machine (PyTorch there, no TensorFlow): the command of one prepared device
# call, carrying the Keras wheels (.whl) and the packed crop cache like model3.sh. It trains the shipped network and
# one network per LGG institution left out (4 files of about 3.5 MB at width 16 come back); scoring needs the raw
# folders, so it happens here afterwards, with the very settings of this run (other settings retrain everything):
#   .venv/bin/python -m core train-lesion --cache data/cache/brain-mri-128.jpeg85.npz --data ../shared/data/brain-mri \
#       --out WHAT_CAME_BACK --folds --draws DRAWS --width WIDTH --batch BATCH
# Settings by environment: DRAWS, WIDTH, BATCH.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=torch PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m core train-lesion --cache data/cache/brain-mri-128.jpeg85.npz --out "${OUT:-/tmp/out}/lesion" --folds \
    --draws "${DRAWS:-400000}" --width "${WIDTH:-16}" --batch "${BATCH:-64}"
