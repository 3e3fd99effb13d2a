"""One trainer per run directory: rank 0 holds an exclusive POSIX lock on ``<run>/.lock`` for the run's life.

    with RunLock(run_dir, wait_s=30):     # RunLocked after 30 s if another trainer holds it
        ...

The lock is ``fcntl.lockf`` (a POSIX ``fcntl`` record lock), which Linux takes
through the network lock manager on NFSv3 (``lockd``) and natively on NFSv4,
and which the kernel releases when the holding process dies, however it dies.
What it relies on: a shared file system whose POSIX locks hold across nodes. NFS
does unless mounted with ``nolock`` (``local_lock``); some parallel file systems
keep locks local to one client unless configured (Lustre's ``flock`` mount option,
BeeGFS's ``tuneUseGlobalFileLocks``): check yours. A file system that refuses locks
altogether is an error saying so. On NFSv4 a lock held by a node that vanished
(power loss, a partition) is released when its lease expires (90 s by default):
``run.lock_wait`` covers a requeued job starting while the old one exits. The file
records who holds it (host, pid, Slurm job id, since when), so the second trainer
can name it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from facealign.errors import CannotStart
from facealign.runs.layout import LOCK_FILE



class RunLocked(CannotStart, RuntimeError):
    """Another trainer holds the run directory; the message names it."""


class RunLock:
    def __init__(self, run_dir, wait_s: float = 30.0, poll_s: float = 0.5):
        self.path = Path(run_dir) / LOCK_FILE
        self.wait_s, self.poll_s = wait_s, poll_s
        self.fd = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise RunLocked(f"{self.path}: the file system refuses POSIX locks ({e.strerror}); a run "
                                    f"directory needs a file system that locks (see facealign/runs/lock.py)") from None
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise RunLocked(f"{self.path.parent} is in use by another trainer ({holder}); waited "
                                    f"{self.wait_s:g} s (run.lock_wait). Stop it, or use another --run-dir") from None
                time.sleep(self.poll_s)
        record = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def holder(self) -> str:
        try:
            h = json.loads(self.path.read_text())
            job = f", Slurm job {h['slurm_job_id']}" if h.get("slurm_job_id") else ""
            return f"pid {h['pid']} on {h['host']}{job}, since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def is_held(self) -> bool:
        """Whether a trainer holds the lock now (for `facealign-launch status`; never call it in a trainer:
        closing this probe's descriptor would drop that process's own lock)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False  # nobody held it (closing drops the probe's lock again)
        except OSError as e:
            return e.errno in (errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)

    def release(self) -> None:
        # Closing the descriptor drops the lock (and any other descriptor of this file closed in this
        # process would too: POSIX locks are per process, so this module is the only one opening it).
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
