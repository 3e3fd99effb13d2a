"""The errors that stop a facealign program with one line, each carrying its documented exit status.

``TrainerError`` is their base: the command-line mains print ``str(error)`` and exit with
``error.exit_code``; anything else is a bug and keeps its traceback. Exit statuses of the trainer:
0 finished; 1 a run-time failure (a non-finite loss, bad records, a lost or stalled rank); 2 a job that
cannot start (a bad spec, a run directory in use, a checkpoint of another model, a GPU this MXNet cannot
run); 75 stopped by a signal after a checkpoint (requeue).
"""
from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_SPEC, EXIT_REQUEUE = 0, 1, 2, 75


class TrainerError(Exception):
    """An error that ends the program with its message as one line and ``exit_code``."""

    exit_code = EXIT_ERROR


class CannotStart(TrainerError):
    """The job cannot start as given: nothing ran, and running it again unchanged fails again."""

    exit_code = EXIT_SPEC
