#!/usr/bin/env bash
# Model 3 on the accelerator machine (PyTorch there, no TensorFlow): the command of one prepared device call.
# Before the call, here (docs/model.md, "On an accelerator"): the Keras wheels in .whl and the packed crop cache,
# both ignored by git and named in the call's carry. Settings by environment: DRAWS (default: sized from the
# measured speed to fit MINUTES), BATCH, LR, MINUTES.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=torch PYTHONUNBUFFERED=1
out="${OUT:-/tmp/out}/model3"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
batch="${BATCH:-512}" minutes="${MINUTES:-7}"
speed=$(python3 bench/backends.py speed --batch "$batch" --steps 20 | tee /dev/stderr |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["draws_per_second"])')
# Without DRAWS: what 70 % of the minutes give at the measured speed (data, validation and saving take the rest),
# at most the 2,000,000 of the schedule. A checkpoint (33 MB at width 32) is over the 16 MiB a returned file may
# hold, so one call must finish its schedule; --fast: no deterministic kernels (nothing resumes here, and the speed
# line measures the same kernels).
draws="${DRAWS:-$(python3 -c "print(min(2_000_000, int($speed * 60 * $minutes * 0.7)))")}"
echo "draws: $draws" >&2
python3 -m core train-standard --cache data/cache/brain-mri-128.jpeg85.npz --out "$out" \
    --batch-size "$batch" --learning-rate "${LR:-2e-3}" --draws "$draws" \
    --validate-every 4 --max-minutes "$minutes" --fast
rm -f "$out"/*.checkpoint.npz
