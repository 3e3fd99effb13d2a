"""Horovod over Gloo inside a Slurm allocation, without horovodrun: the rendezvous server the batch step runs for
each srun step (what ``horovodrun --gloo`` runs on its host), the network interface the nodes share, and on
every task the ``HOROVOD_*`` variables Slurm's own describe.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil


def interface_address(iface: str) -> str:
    for addr in psutil.net_if_addrs().get(iface, []):
        if addr.family == socket.AF_INET:
            return addr.address
    raise SystemExit(f"launcher: network interface {iface!r} has no IPv4 address on {socket.gethostname()} "
                     f"(set FACEALIGN_GLOO_IFACE to an interface the nodes share)")


def default_iface(num_nodes: int) -> str:
    """``lo`` on one node; otherwise the interface of the default route (FACEALIGN_GLOO_IFACE overrides)."""
    if os.environ.get("FACEALIGN_GLOO_IFACE"):
        return os.environ["FACEALIGN_GLOO_IFACE"]
    if num_nodes == 1:
        return "lo"
    try:
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return fields[0]
    except OSError:
        pass
    raise SystemExit("launcher: cannot tell which network interface the nodes share; set FACEALIGN_GLOO_IFACE")


def start_rendezvous(nodes: list[str], per_node: int):
    """Horovod's Gloo rendezvous server for one step (what ``horovodrun --gloo`` runs on its host), and the
    variables that point the ranks at it."""
    from horovod.runner.common.util import hosts
    from horovod.runner.http.http_server import RendezvousServer

    iface = default_iface(len(nodes))
    addr = interface_address(iface)
    plan = hosts.get_host_assignments(hosts.parse_hosts(",".join(f"{n}:{per_node}" for n in nodes)),
                                      len(nodes) * per_node)
    server = RendezvousServer(verbose=0)
    port = server.start()
    server.init(plan)
    return server, {"HOROVOD_GLOO_RENDEZVOUS_ADDR": addr, "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
                    "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_GLOO_IFACE": iface,
                    "NCCL_SOCKET_IFNAME": iface, "FACEALIGN_NODES": ",".join(nodes),
                    "FACEALIGN_TASKS_PER_NODE": ",".join([str(per_node)] * len(nodes))}


def horovod_task_env(env) -> dict:
    """On every task: the ``HOROVOD_*`` variables of its rank, from ``SLURM_*`` and the node plan
    (``FACEALIGN_NODES``, ``FACEALIGN_TASKS_PER_NODE``) the batch step exported."""
    rank, local_rank = int(env["SLURM_PROCID"]), int(env["SLURM_LOCALID"])
    node = int(env["SLURM_NODEID"])
    nodes = env["FACEALIGN_NODES"].split(",")
    per_node = [int(c) for c in env["FACEALIGN_TASKS_PER_NODE"].split(",")]
    # Horovod's plan gives each host a block of ranks in node order: the same as Slurm's block distribution.
    first = sum(per_node[:node])
    if not first <= rank < first + per_node[node]:
        raise SystemExit(f"launcher: task {rank} on node {node} is outside that node's block of ranks "
                         f"{first}..{first + per_node[node] - 1}; use the default block distribution")
    return {"HOROVOD_RANK": str(rank), "HOROVOD_SIZE": env["SLURM_NTASKS"], "HOROVOD_LOCAL_RANK": str(local_rank),
            "HOROVOD_LOCAL_SIZE": str(per_node[node]), "HOROVOD_CROSS_RANK": str(node),
            "HOROVOD_CROSS_SIZE": str(len(nodes)), "HOROVOD_HOSTNAME": nodes[node]}
