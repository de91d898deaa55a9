#!/usr/bin/env bash
# Train the flagship ResNet50V2 on a GPU machine that has JAX but no TensorFlow, in one lease: each config
# trains at once beside the others on the one GPU, each in its own time budget (`time_budget_s`; whether they
# slow each other shows in the rates each prints over its first steps), then the best on PublicTest comes
# back as float16 parts:
#
#   bash train/gpu/train_flagship.sh DATA OUT_DIR CONFIG... [-- extra `feredge train` args]
#   python train/gpu/weights.py join OUT_DIR RUN_DIR      # here, then: feredge calibrate / export RUN_DIR
#
# The shared zip (62 MB) and the repository don't fit together into the 64 MiB that travels to the GPU
# machine: carry the lossless training pack instead (train + PublicTest, 40 MB) and unpack it there:
#
#   python train/gpu/pack.py make ../shared/data/fer2013/fer2013.zip .carry/fer_pack.npz     # here
#   python3 train/gpu/pack.py unpack .carry/fer_pack.npz /tmp/fer2013 && WHEELS=.whl bash \
#       train/gpu/train_flagship.sh /tmp/fer2013 $OUT resnet50v2_gpu.toml resnet50v2_gpu_labels.toml   # there
#
# The runs report PublicTest only; PrivateTest is measured here, by `feredge evaluate` and the export gate.
# OUT_DIR gets the winner's weights (float16 parts: files from the GPU machine are capped at 16 MiB), its
# config, and runs.tar.gz with every run's log, history and PublicTest report. DEADLINE (seconds, default
# 540) stops a run that overruns its budget; its best.keras so far still counts.
#
# WHEELS=dir installs the Keras side from local wheels (keras, namex, optree) for machines without network.
set -euo pipefail
data=$1 out=$2
shift 2
configs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
cd "$(dirname "$0")/../.."
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/feredge-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/feredge-site${PYTHONPATH:+:$PYTHONPATH}
fi
# The package itself, without its TensorFlow-bound dependencies.
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --target "$PWD/.gpu-pkg" . >/dev/null
export PYTHONPATH=$PWD/.gpu-pkg${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
# Each run takes its share of GPU memory, not JAX's default 75 %.
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / ${#configs[@]}, 2))")
python3 -c "import keras, jax; print('keras', keras.__version__, 'backend', keras.backend.backend(), 'devices', jax.devices())"
mkdir -p "$out" runs/gpu
runs=()
for config in "${configs[@]}"; do
  name=$(basename "$config" .toml)
  runs+=("runs/gpu/$name")
  # Progress reaches the console as it comes (a lease can end mid-run); the whole log goes to the run's .log.
  (timeout "${DEADLINE:-540}" python3 -m feredge.cli train --config "$config" --run-dir "runs/gpu/$name" --data "$data" "$@" 2>&1 \
    | tee "runs/gpu/$name.log" | grep --line-buffered -E "Epoch|step|img/s|budget|saved|rror" | sed -u "s|^|[$name] |") &
done
wait  # a run that failed or overran still leaves its log and its best.keras so far
tar czf "$out/runs.tar.gz" runs/gpu/*.log $(for r in "${runs[@]}"; do ls -d "$r"/*.csv "$r"/*.json "$r"/*.png 2>/dev/null; done)
JAX_PLATFORMS=cpu python3 train/gpu/weights.py best "$out" "${runs[@]}"
