"""How a rank's training ends when it does not finish: the errors of a failed run, a lost peer told from a
bug, the stop signals, and the exit record the launchers read.

Exit statuses (facealign.errors): 0 finished; 75 stopped by SIGTERM/SIGUSR2 after a checkpoint (the Slurm
templates requeue on it); 1 a run-time failure (a non-finite loss, which names the step and leaves the last
good checkpoint intact; bad records; a rank or node that went away or stalled, ``LostPeer``, which rank 0
records as ``lost_peer`` for the launchers to restart: facealign.train.watchdog); 2 a job that cannot start
(``CannotStart``: a bad spec or missing record files, a run directory holding another model's checkpoints or
locked by another trainer, a ``model.pretrained`` that is no model, a GPU this MXNet cannot run). Each is one
line on stderr.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from horovod.common.exceptions import HorovodInternalError

from facealign.errors import EXIT_ERROR, TrainerError
from facealign.runs.layout import EXIT_FILE, LOG_FILE, write_json


class NonFiniteLoss(TrainerError):
    """A non-finite loss, gradient or state: the run stops before the update, its checkpoints intact."""


class LostPeer(TrainerError):
    """Another rank or its node went away, or stalled: the launchers restart from the last checkpoint."""


class StopFlag:
    """SIGTERM / SIGUSR2 only set a flag; the ranks vote on it at each step boundary."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        self.signal = signal.Signals(signum).name


def exit_code_for(error: BaseException) -> int:
    """The documented exit status of an error that stops the trainer."""
    if isinstance(error, KeyboardInterrupt):
        return 130
    return error.exit_code if isinstance(error, TrainerError) else EXIT_ERROR


# Horovod's collectives run inside MXNet's engine, which re-raises their failures as MXNetError with the
# message as the only trace: a peer's exit or Horovod's stall inspector shut Horovod down, or Gloo's
# transport lost the peer. Only these messages are told apart here, in one place.
LOST_PEER_SIGNS = ("Horovod has been shut down", "HorovodInternalError", "Gloo", "gloo", "Connection reset by peer",
                   "Connection closed by peer", "Broken pipe")


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` says another rank or its node went away (the launchers restart on this alone)."""
    if isinstance(error, HorovodInternalError):
        return True
    if isinstance(error, TrainerError) or not isinstance(error, (RuntimeError, OSError)):
        return False
    return any(sign in str(error) for sign in LOST_PEER_SIGNS)


def collective_failure(error: BaseException) -> str:
    """The first sentence of a failed collective's message (MXNet's wraps it in a C++ trace)."""
    first = str(error).replace("MXNetError: ", "").strip().splitlines()
    return (first[0] if first else type(error).__name__).split(". ")[0][:200]


def ending(error: BaseException, heartbeat) -> tuple[int, str, bool]:
    """(exit code, the one line, whether a peer was lost) for an error that ended the run. A lost peer's
    line names the ranks that no longer answer (``heartbeat.census_line``)."""
    code = exit_code_for(error)
    if isinstance(error, TrainerError):
        return code, str(error), False
    if lost_peer(error):
        what = f"a collective failed ({collective_failure(error)}): a rank or node went away"
        return code, heartbeat.census_line(what) if heartbeat is not None else what, True
    return code, f"{type(error).__name__}: {error}", False


def record_exit(world, holds_run: bool, run_dir: Path, code: int, reason: str, lost: bool = False) -> None:
    """Rank 0: the launcher's file if it set one, and the run's own exit.json (facealign-launch status reads
    it) once this trainer holds the run directory. ``lost``: a rank or node went away (restartable)."""
    if world is None or not world.is_primary:
        return
    target = os.environ.get("FACEALIGN_EXIT_FILE")
    if target:
        write_exit(Path(target), code, reason, lost)
    if holds_run:
        write_exit(run_dir / EXIT_FILE, code, reason, lost)


def write_exit(path: Path, code: int, reason: str, lost: bool = False) -> None:
    write_json(path, {"code": code, "reason": reason, "lost_peer": lost, "time": time.time()}, indent=None)


def exit_on_stall(world, run_dir: Path, line: str) -> None:
    """On the watchdog's thread, while the main one is stuck: the line (rank 0: in the log and the exit
    record too), then out, with no clean-up that could wait for the stalled rank."""
    print(f"facealign.train: {line}", file=sys.stderr, flush=True)
    if world.is_primary:
        with contextlib.suppress(OSError), open(run_dir / LOG_FILE, "a") as fh:
            fh.write(time.strftime("%H:%M:%S ") + line + "\n")
    record_exit(world, world.is_primary, run_dir, EXIT_ERROR, line, lost=True)
    os._exit(EXIT_ERROR)
