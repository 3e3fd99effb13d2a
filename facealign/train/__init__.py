"""Training: the loop (``loop``; ``python -m facealign.train``), its set-up (``setup``), how it reports
(``reporting``) and how it fails (``faults``), and what only training uses: the nominal world, losses,
the optimizer and schedule, loss scaling, AMP, the Horovod facade and sharded validation."""
