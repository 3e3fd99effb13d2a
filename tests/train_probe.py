"""Run by the trainer tests under horovodrun: one rank of facealign.train, observed.

    python tests/train_probe.py PROBE_DIR --job ... [--set ...] --run-dir RUN

Every write-mode open, mkdir, rename/replace, remove and rmtree under the run
directory is recorded by an audit hook (all of the checkpoint manager's writes
pass through these), and each rank's final parameters are saved to
PROBE_DIR/rank<r>.params with a JSON report of its writes and exit code.

``FACEALIGN_PROBE_INF_GRAD=RANK:CALL``: after backward call number CALL (1-based) on rank RANK, one
gradient array of the network is set to +inf, as a float16 overflow on that rank alone would leave it.
"""
import faulthandler
import json
import os
import sys
from pathlib import Path

from facealign.spec.schema import load_job
from facealign.cli.train import parse_args
from facealign.train.faults import NonFiniteLoss
from facealign.train.loop import train


def inject_inf_gradient(rank: int) -> None:
    spec = os.environ.get("FACEALIGN_PROBE_INF_GRAD")
    if not spec:
        return
    target_rank, call = (int(x) for x in spec.split(":"))
    if rank != target_rank:
        return
    import mxnet as mx

    from facealign.train import setup

    nets, calls = [], [0]
    initialize, backward = setup.initialize, mx.autograd.backward

    def capture(net, *a, **kw):
        nets.append(net)
        return initialize(net, *a, **kw)

    def backward_then_poison(*a, **kw):
        backward(*a, **kw)
        calls[0] += 1
        if calls[0] == call:
            grad = next(p for p in nets[0].collect_params().values() if p.grad_req != "null").list_grad()[0]
            grad[:] = float("inf")
            print(f"train_probe: rank {rank}: +inf gradient after backward call {call}", file=sys.stderr, flush=True)

    setup.initialize, mx.autograd.backward = capture, backward_then_poison


def main() -> int:
    faulthandler.enable()  # as facealign.cli.train: a native crash names the Python line it happened under
    probe_dir = Path(sys.argv[1])
    args = parse_args(sys.argv[2:])
    run_dir = str(Path(args.run_dir).resolve())
    rank = int(os.environ.get("HOROVOD_RANK", "0"))
    writes = []

    def inside(path) -> bool:
        return path is not None and not isinstance(path, int) and str(Path(str(path)).resolve()).startswith(run_dir)

    def audit(event, hook_args):
        if event == "open":
            path, mode, flags = hook_args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                      (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and inside(path):
                writes.append(f"open {path}")
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "shutil.rmtree") and inside(hook_args[0]):
            writes.append(f"{event} {hook_args[0]}")

    sys.addaudithook(audit)
    inject_inf_gradient(rank)

    def on_finish(net, world):
        net.save_parameters(str(probe_dir / f"rank{world.rank}.params"))

    try:
        code = train(load_job(args.job, args.set), Path(args.run_dir), on_finish=on_finish)
    except NonFiniteLoss as e:
        print(f"facealign.train: {e}", file=sys.stderr, flush=True)
        code = 1
    (probe_dir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "exit": code, "writes": writes}))
    return code


if __name__ == "__main__":  # the loader's spawned workers import this module: run only as a script
    sys.exit(main())
