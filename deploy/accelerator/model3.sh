#!/usr/bin/env bash
# Model 3 on the accelerator machine (PyTorch there, no TensorFlow): the command of one prepared device call.
# Before the call, here (docs/model.md, "On an accelerator"): the Keras wheels in .whl and the packed crop cache,
# both ignored by git and named in the call's carry. Settings by environment: DRAWS, BATCH, LR, MINUTES.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=torch PYTHONUNBUFFERED=1
out="${OUT:-/tmp/out}/model3"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 bench/backends.py speed --batch "${BATCH:-512}" --steps 20
python3 -m core train-standard --cache data/cache/brain-mri-128.jpeg85.npz --out "$out" \
    --batch-size "${BATCH:-512}" --learning-rate "${LR:-2e-3}" --draws "${DRAWS:-2000000}" \
    --validate-every 4 --max-minutes "${MINUTES:-7}" --fast
# --fast: no deterministic kernels (the checkpoint cannot come back, so nothing resumes, and the speed line above
# measures the same kernels). A checkpoint (33 MB at width 32) is over the 16 MiB a returned file may hold: a run
# that paused says so in its log and starts again in the next call; size DRAWS from the speed line so that one
# call finishes.
rm -f "$out"/*.checkpoint.npz
