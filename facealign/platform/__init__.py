"""What this machine's stack can do: the CPU's matrix engines for oneDNN (``cpu_isa``), the start-up
GPU probe (``gpu_probe``), bfloat16's exact operators (``bfloat16``) and structures run through
oneDNN in guarded processes (``kernel_check``)."""
