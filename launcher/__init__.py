"""Cluster launch: ``facealign-launch`` (cli.py: validate, render, submit, local) and the in-allocation
rank starter ``python -m launcher.slurm`` (srun, Horovod Gloo rendezvous or MPI, requeue). No MXNet here."""
