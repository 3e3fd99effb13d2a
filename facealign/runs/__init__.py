"""Everything a run directory holds: ``layout`` names every file in it; ``checkpoint`` (the checkpoint
layout and manager), ``lock`` (one trainer per run), ``status`` (progress, exit, Slurm records and
what ``facealign-launch status`` prints) and ``artifact`` (what a trained model is on disk)."""
