#!/bin/sh
# The train image's command: `python -m training fit`, then `python -m training export` into the model repository.
#
# Configured by environment variables (defaults in the Dockerfile's train stage, overridden by docker-compose.yml):
#   MODEL_REPOSITORY  where NAME/VERSION/ folders are published (a volume the server reads)
#   MODEL_NAME        the model's name in the repository (clients ask for it)
#   RUNS_DIR          where the training run (weights, metrics.json, plots) is kept
#   TRAIN_DATA        `digits` (bundled with scikit-learn) or the absolute path of an image folder mounted in
#   TRAIN_ARCH, TRAIN_EPOCHS   `--arch`, `--epochs` of `python -m training fit`
#   TRAIN_ARGS        more `fit` options, e.g. "--lr 0.01 --size 32 --no-plots"
#   TRAIN_THREADS     torch's CPU threads (OMP_NUM_THREADS); empty: one per core. On a machine whose cores are busy
#                     with other work, 1 avoids threads spinning against each other (an epoch took 6x longer here)
#   EXPORT_ARGS       more `export` options, e.g. "--quantize int8"
#   TRAIN_FORCE       1: train and publish a new version even if the model already has one
#
# Compose starts the trainer on every `up`: when the repository already holds the model it exits at once (status 0),
# so restarting the stack does not retrain. A failed fit or a failed verification exits non-zero, and the server,
# which waits for the trainer to complete successfully, does not start.
set -eu

repository="${MODEL_REPOSITORY:-/model_repository}"
name="${MODEL_NAME:-digits}"

if [ "${TRAIN_FORCE:-0}" != "1" ] && ls "$repository/$name"/*/model.onnx >/dev/null 2>&1; then
    echo "train.sh: $repository/$name already holds a model; set TRAIN_FORCE=1 to train a new version"
    exit 0
fi

# The code in /app belongs to root: work from a scratch folder, since fastai's lr_find saves a temporary checkpoint
# under ./models/ of the current directory.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"

if [ -n "${TRAIN_THREADS:-}" ]; then
    export OMP_NUM_THREADS="$TRAIN_THREADS"
fi

run="${RUNS_DIR:-/runs}/$name-$(date -u +%Y%m%dT%H%M%SZ)"
echo "train.sh: training $name on ${TRAIN_DATA:-digits} into $run"
# TRAIN_ARGS and EXPORT_ARGS hold several options: word splitting is wanted.
# shellcheck disable=SC2086
python -m training fit --data "${TRAIN_DATA:-digits}" --arch "${TRAIN_ARCH:-resnet20}" \
    --epochs "${TRAIN_EPOCHS:-5}" --out "$run" ${TRAIN_ARGS:-}
# shellcheck disable=SC2086
python -m training export "$run" --repository "$repository" --name "$name" ${EXPORT_ARGS:-}
