"""What this machine's stack can do: the CPU's matrix engines for oneDNN (``cpu_isa``), the start-up
GPU probe (``gpu_probe``) and bfloat16's exact operators (``bfloat16``). Every structure through
oneDNN, in guarded processes: facealign.cli.kernel_check."""
