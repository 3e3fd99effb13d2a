#!/bin/bash
# Train SAT2(d=3)-CAB with Horovod on Slurm: ranks started by srun (never ssh), requeued on preemption.
#
#   sbatch slurm/train_sat.sh                                  # jobs/sat2-d3-cab.yaml: 1 node, 1 GPU (the reference)
#   sbatch slurm/train_sat.sh jobs/sat2-d3-cab-3d.yaml --set optim.lr=2e-4
#   sbatch --gres=none --cpus-per-task=2 slurm/train_sat.sh my_cpu_job.yaml  # a CPU partition
#
# The #SBATCH lines below are the defaults of jobs/sat2-d3-cab.yaml; a spec with other resources
# needs matching sbatch options (--nodes, --ntasks-per-node, --gres), or `facealign-launch submit
# SPEC`, which writes this script with the spec's own. The world size is checked before training.
# Logs: logs/<job name>-<job id>.out, appended across requeues. Run directory: runs/<run.name>
# (or FACEALIGN_RUN_DIR).
# In a container: FACEALIGN_CONTAINER=IMAGE sbatch ... (Pyxis, or Apptainer for .sif / docker:// images;
# Hopper needs NVIDIA's MXNet image: docker/README.md).
#SBATCH --job-name=facealign-sat
#SBATCH --nodes=1
#SBATCH --no-kill
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=6
#SBATCH --time=2-00:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
export FACEALIGN_JOB_DEFAULT=jobs/sat2-d3-cab.yaml
exec bash "${SLURM_SUBMIT_DIR:-.}/slurm/run-training.sh" "$@"
