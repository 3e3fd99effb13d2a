"""A rank that stops but does not die: found, named, and the job ended within ``run.stall_timeout_s``.

A rank stuck in a GPU call or a hung file system holds every other rank in its next collective, with
MPI or NCCL possibly until the time limit. Three bounds, the first to fire wins:

* this watchdog: a thread on every rank that ends the process when the rank has made no progress
  (``beat``) for ``stall_timeout_s``;
* Horovod's stall inspector (``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS``, set by the launchers a little
  later: facealign.spec.components.runtime_env), which shuts Horovod down so the next collective fails;
* Gloo's own transport timeout (about 30 s), when that comes first.

Whichever fires, the ranks still running ask every rank where it is (``census``) over a small UDP
responder each rank runs: a rank waiting in a collective answers so, a rank that is stopped does not
answer, a rank that hangs outside a collective answers with how long it has computed. The one line
names the rank and host that stalled, rank 0 records it (``lost_peer``) and the launchers restart.

A rank that was itself stopped (SIGSTOP, a suspended VM) and runs again finds its watchdog woke late: the
stall was its own, and its one line says so rather than blaming the peers that have gone meanwhile.

The responders answer only the ranks of their own job: every question carries a secret drawn by rank 0 and
shared at the allgather that introduces the ranks, and a census counts only answers that carry it back.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass

from facealign.train import dist

ASK = b"where:"


@dataclass(frozen=True)
class Peer:
    rank: int
    host: str
    address: tuple  # (ip, port) of its responder


def responder_address() -> str:
    """The address other ranks reach this one at: Gloo's interface where a launcher named it, else the host's."""
    iface = os.environ.get("HOROVOD_GLOO_IFACE")
    if iface:
        import psutil

        for addr in psutil.net_if_addrs().get(iface, []):
            if addr.family == socket.AF_INET:
                return addr.address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class Heartbeat:
    """This rank's progress, answered to any rank that asks, and the watchdog over it."""

    def __init__(self, world, timeout_s: float | None, on_stall):
        self.world, self.timeout_s, self.on_stall = world, timeout_s, on_stall
        self.host = socket.gethostname()
        self.step, self.last_beat = 0, time.monotonic()
        self.closed = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((responder_address(), 0))
        self.sock.settimeout(0.5)
        mine = {"rank": world.rank, "host": self.host, "address": list(self.sock.getsockname()),
                "secret": secrets.token_hex(16) if world.is_primary else ""}
        every = dist.allgather_object(mine, "facealign.heartbeat")
        self.secret = every[0]["secret"]  # rank 0's, on every rank: the job's own
        self.peers = [Peer(p["rank"], p["host"], tuple(p["address"])) for p in every]
        threading.Thread(target=self._answer, name="facealign-heartbeat", daemon=True).start()
        if timeout_s:
            threading.Thread(target=self._watch, name="facealign-watchdog", daemon=True).start()

    def beat(self, step: int) -> None:
        """The rank made progress (a step, a validation, a checkpoint)."""
        self.step, self.last_beat = step, time.monotonic()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()

    def where(self) -> dict:
        now = time.monotonic()
        waiting = dist.waiting_since()
        return {"rank": self.world.rank, "host": self.host, "step": self.step, "idle_s": now - self.last_beat,
                "in_collective_s": None if waiting is None else now - waiting}

    def _answer(self) -> None:
        while not self.closed.is_set():
            try:
                data, sender = self.sock.recvfrom(64)
            except (socket.timeout, OSError):
                continue
            if hmac.compare_digest(data, ASK + self.secret.encode()):  # a rank of this job asks: anyone else is ignored
                try:
                    self.sock.sendto(json.dumps({**self.where(), "secret": self.secret}).encode(), sender)
                except OSError:
                    pass

    def _watch(self) -> None:
        woke = time.monotonic()
        while not self.closed.wait(1.0):
            now = time.monotonic()
            asleep, woke = now - woke, now
            if now - self.last_beat <= self.timeout_s:
                continue
            if asleep > max(5.0, self.timeout_s / 2):  # this thread did not run either: the whole process was stopped
                self.on_stall(f"rank {self.world.rank} on {self.host} was stopped for {asleep:.0f} s (SIGSTOP or a "
                              f"suspended host) and stalled the job itself; it stops now")
            else:
                self.on_stall(self.census_line(f"no progress on rank {self.world.rank} for "
                                               f"{self.timeout_s:g} s (run.stall_timeout_s)"))
            return

    def census(self, wait_s: float = 2.0) -> dict[int, dict | None]:
        """Every rank's answer (None: no answer in ``wait_s``), from a socket of its own."""
        answers = {p.rank: None for p in self.peers}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(v is None for v in answers.values()):
                for p in self.peers:
                    if answers[p.rank] is None:
                        s.sendto(ASK + self.secret.encode(), p.address)
                try:
                    while True:
                        data, _ = s.recvfrom(4096)
                        got = json.loads(data)
                        if hmac.compare_digest(str(got.get("secret", "")), self.secret) and got.get("rank") in answers:
                            answers[int(got["rank"])] = got  # only this job's ranks count
                except (socket.timeout, OSError, ValueError, AttributeError):
                    pass
        return answers

    def census_line(self, what: str) -> str:
        """One line: ``what``, then the ranks that stalled (no answer, or stuck outside a collective)."""
        answers = self.census()
        hosts = {p.rank: p.host for p in self.peers}
        silent = [r for r, a in answers.items() if a is None]
        stuck = [r for r, a in answers.items() if a is not None and a["in_collective_s"] is None
                 and self.timeout_s and a["idle_s"] > self.timeout_s]
        named = [f"rank {r} on {hosts[r]} stopped answering" for r in silent]
        named += [f"rank {r} on {hosts[r]} hangs outside any collective at step {answers[r]['step']} "
                  f"({answers[r]['idle_s']:.0f} s)" for r in stuck]
        if not named:
            named = ["every rank answers and waits in a collective"]
        return f"{what}: {'; '.join(named)}"
