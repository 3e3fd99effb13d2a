"""The lines every sbatch script facealign-launch writes shares: #SBATCH from the spec's resources, and
the container's exports (launcher.slurm reads them inside the allocation)."""
from __future__ import annotations

import shlex
from pathlib import Path


def sbatch_lines(spec, job_name: str, output: str, extra=(), array: str | None = None) -> list[str]:
    """#SBATCH lines: the spec's resources (a node range from ``min_nodes``, kept on a node failure), preemption
    (USR2 120 s before the limit, requeue, appended log)."""
    r = spec.resources
    lines = [f"#SBATCH --job-name={job_name}"]
    if array:
        lines.append(f"#SBATCH --array={array}")
    # --no-kill keeps the allocation when a node fails, so launcher.slurm can restart the ranks on the nodes left
    if spec.min_nodes < r.nodes:
        # A range lets Slurm start (or requeue) the job on fewer nodes. With --ntasks-per-node Slurm counts the
        # tasks at the smallest node count and allocates that many nodes, so the per-node CPUs are asked for
        # instead (--mincpus) and launcher.slurm's srun places tasks_per_node ranks on each node.
        lines += [f"#SBATCH --nodes={spec.min_nodes}-{r.nodes}", "#SBATCH --no-kill",
                  f"#SBATCH --mincpus={r.tasks_per_node * r.cpus_per_task}"]
    else:
        lines += [f"#SBATCH --nodes={r.nodes}", "#SBATCH --no-kill", f"#SBATCH --ntasks-per-node={r.tasks_per_node}"]
    lines += [f"#SBATCH --cpus-per-task={r.cpus_per_task}", f"#SBATCH --time={r.time}"]
    if r.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{r.gpus_per_node}")
    if r.partition:
        lines.append(f"#SBATCH --partition={r.partition}")
    lines += ["#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
              f"#SBATCH --output={output}", f"#SBATCH --chdir={Path.cwd()}"]
    return lines + [f"#SBATCH {opt}" for opt in extra]


def container_exports(container=None, mounts=(), runtime=None) -> list[str]:
    """FACEALIGN_CONTAINER* for launcher.slurm (docker/README.md), or nothing."""
    if not container:
        return []
    lines = [f"export FACEALIGN_CONTAINER={shlex.quote(container)}"]
    if mounts:
        lines.append(f"export FACEALIGN_CONTAINER_MOUNTS={shlex.quote(','.join(mounts))}")
    if runtime:
        lines.append(f"export FACEALIGN_CONTAINER_RUNTIME={runtime}")
    return lines
