#!/bin/bash
# Evaluate a run's best checkpoint on one GPU (or the CPU), as its own job; chain it after training:
#
#   train=$(sbatch --parsable slurm/train_sat.sh)
#   sbatch --dependency=afterok:$train slurm/eval.sh runs/sat2-d3-cab data/2d/ibug data/2d/cofw_testset data/2d/300W
#   sbatch --gres=none slurm/eval.sh runs/demo synthetic=data/synth_val_visible       # CPU
#
# Arguments: RUN_DIR then test sets ([name=]prefix); FACEALIGN_EVAL_ARGS adds facealign-eval options
# (e.g. "--protocol reference --flip"). The report goes to RUN_DIR/eval/<checkpoint>/ and TensorBoard.
# FACEALIGN_CONTAINER=IMAGE runs it inside that image, as the training templates do (docker/README.md).
#SBATCH --job-name=facealign-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=02:00:00
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
[ $# -ge 2 ] || { echo "usage: sbatch slurm/eval.sh RUN_DIR [NAME=]PREFIX [...]" >&2; exit 2; }
RUN="$1"; shift
GPU=()
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]; then GPU=(--gpu 0); fi
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" MXNET_CPU_WORKER_NTHREADS="${SLURM_CPUS_PER_TASK:-1}"
# shellcheck disable=SC2086
# launcher.slurm exec: in FACEALIGN_CONTAINER's image when one is set (srun), else right here
exec "${FACEALIGN_LAUNCH_PYTHON:-.venv/bin/python}" -m launcher.slurm exec -- python -m facealign.cli.eval "$RUN" \
  --data "$@" "${GPU[@]}" --quiet ${FACEALIGN_EVAL_ARGS:-}
