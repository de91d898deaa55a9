#!/usr/bin/env bash
# Train the flagship ResNet50V2 on a GPU machine that has JAX but no TensorFlow, then bring
# runs/resnet50v2/best.keras back and export it where TensorFlow is installed:
#
#   bash train/gpu/train_flagship.sh [FER2013_ZIP] [RUN_DIR] [extra `feredge train` args...]
#   feredge export RUN_DIR --out models/resnet50v2            # on the CPU machine, with [export]
#
# The shared zip (62 MB) and the repository don't fit together into the 64 MiB that travels to the GPU
# machine: carry the lossless training pack instead (train + PublicTest, 40 MB) and unpack it there:
#
#   python train/gpu/pack.py make ../shared/data/fer2013/fer2013.zip .carry/fer_pack.npz     # here
#   python3 train/gpu/pack.py unpack .carry/fer_pack.npz /tmp/fer2013 && \
#       WHEELS=.whl bash train/gpu/train_flagship.sh /tmp/fer2013 RUN_DIR ...                  # there
#
# The run then reports PublicTest only; PrivateTest is measured here, by `feredge evaluate` and the export gate.
# best.keras is too large to come back whole (files from the GPU machine: 16 MiB each): `python3
# train/gpu/weights.py split RUN_DIR $OUT` there, `python train/gpu/weights.py join PARTS RUN_DIR` here.
#
# WHEELS=dir installs the Keras side from local wheels (keras, namex, optree, and what they need)
# for machines without network. ImageNet weights: put resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5
# in ~/.keras/models/ or pass --set weights=PATH; without them the run trains from scratch and says so.
set -euo pipefail
data=${1:-${FER2013_ZIP:-../shared/data/fer2013/fer2013.zip}}
run=${2:-runs/resnet50v2}
shift $(( $# > 2 ? 2 : $# ))
cd "$(dirname "$0")/../.."
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/feredge-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/feredge-site:$PWD/.gpu-pkg${PYTHONPATH:+:$PYTHONPATH}
fi
# The package itself, without its TensorFlow-bound dependencies.
python3 -m pip install -q --no-deps --no-build-isolation --target "$PWD/.gpu-pkg" . 2>/dev/null || true
export PYTHONPATH=$PWD/.gpu-pkg${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
python3 -c "import keras, jax; print('keras', keras.__version__, 'backend', keras.backend.backend(), 'devices', jax.devices())"
python3 -m feredge.cli train --config train/configs/resnet50v2.toml --run-dir "$run" --data "$data" "$@"
