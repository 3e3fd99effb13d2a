#!/bin/bash
# The body of the training templates (train_sat.sh, train_hourglass.sh, and what facealign-launch
# submit writes): run inside the allocation, from the submit directory.
#   $1 (optional, not starting with --): the job spec, else FACEALIGN_JOB, else FACEALIGN_JOB_DEFAULT
#   the rest: --set key=value overrides, passed to the trainer
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  JOB="$1"; shift
else
  JOB="${FACEALIGN_JOB:-${FACEALIGN_JOB_DEFAULT:-}}"
fi
[ -n "$JOB" ] || { echo "run-training.sh: no job spec: pass one or set FACEALIGN_JOB" >&2; exit 2; }
export SLURM_KILL_BAD_EXIT=1          # srun --kill-on-bad-exit: one rank failing ends the step
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" MXNET_CPU_WORKER_NTHREADS="${SLURM_CPUS_PER_TASK:-1}"
exec "${FACEALIGN_LAUNCH_PYTHON:-.venv/bin/python}" -m launcher.slurm train --job "$JOB" \
  ${FACEALIGN_RUN_DIR:+--run-dir "$FACEALIGN_RUN_DIR"} "$@"
