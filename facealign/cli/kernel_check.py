"""Run structures through MXNet's oneDNN kernels, each case guarded by a process of its own.

oneDNN 2.4.4 (MXNet 1.9.1) kills a process for some layouts (SIGFPE, or "could not construct a
sub-memory"; ``layers.concat_channels`` says which and how the networks avoid it). A signal cannot be
caught in the process that gets it, so cases run in worker processes: a worker that dies fails the case it
was in, and a new worker carries on with the rest. Workers are grouped by mode, since AMP patches MXNet's
operators for the whole process.

A case is (model, width, mode): the named model's structure at that width, on a small input (64 -> 32
pixels, depth 2: the same blocks, concatenations and smallest maps (8 x 8) as the zoo's 128 -> 64 at
depth 3), or at the model's own size; batch 2, hybridised with static memory as the trainer and the
exports do. Modes:

    float32             one forward and backward pass (training)
    bfloat16            the same under bfloat16 AMP (``optim.amp: bfloat16``)
    bfloat16-inference  the bfloat16 inference graph of ``facealign-export --precision bfloat16``
    int8-inference      MXNet's int8 graph of ``facealign-export --precision int8`` (calibrated on noise)

    python -m facealign.cli.kernel_check --models hg2-d3-cab --widths 16 24 32 --modes float32
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

MODES = ("float32", "bfloat16", "bfloat16-inference", "int8-inference")
SMALL = dict(input_size=64, heatmap_size=32, depth=2)  # the zoo's smallest maps (8 x 8), at a quarter of its cost


@dataclass(frozen=True)
class Case:
    model: str
    width: int | None  # None: the model's own
    mode: str
    small: bool = True  # False: the model's own input size and depth


@dataclass
class Outcome:
    case: Case
    ok: bool
    detail: str = ""  # the error line or signal of a failed case
    seconds: float = 0.0


def run_case(case: Case) -> None:
    """One case in this process (a worker); raises on an error, dies on a signal."""
    import mxnet as mx
    import numpy as np
    from mxnet import autograd

    from facealign.models import get_model, initialize

    if case.mode == "bfloat16":
        from facealign.train import amp

        amp.init("bfloat16")  # once per process: workers never mix modes
    overrides = {**(SMALL if case.small else {}), **({"width": case.width} if case.width else {})}
    net = initialize(get_model(case.model, **overrides), seed=0)
    net.hybridize(static_alloc=True)
    size = net.spec.input_size
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 3, size, size)).astype(np.float32)
    if case.mode in ("float32", "bfloat16"):
        with autograd.record():
            loss = sum(h.astype("float32").sum() for h in net(mx.nd.array(pixels)))
        loss.backward()
    elif case.mode == "bfloat16-inference":
        from facealign.serve import graphs

        graphs.bfloat16_inference_network(net, pixels[:1])(mx.nd.array(pixels))
    elif case.mode == "int8-inference":
        from facealign.serve.export import to_int8

        to_int8(net, None, pixels, "naive")(mx.nd.array(pixels))
    else:
        raise ValueError(f"unknown mode {case.mode!r}; expected one of {MODES}")
    mx.nd.waitall()  # errors surface here, at the kernels


def _worker(cases: list[Case]) -> None:
    """Announce each case, run it, report it: one JSON line each (the parent reads a case announced but
    never reported as the one that killed this process)."""
    for case in cases:
        print(json.dumps({"start": asdict(case)}), flush=True)
        t = time.perf_counter()
        try:
            run_case(case)
            result = {"ok": True}
        except Exception as e:  # a failed case is data here, reported by the parent
            result = {"ok": False, "detail": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"}
        print(json.dumps({"done": asdict(case), "seconds": time.perf_counter() - t, **result}), flush=True)


def _describe_death(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    return f"worker exited {returncode}" + (f": {lines[-1][:300]}" if lines else "")


def _run_group(cases: list[Case], timeout: float, threads: int) -> list[Outcome]:
    """Run ``cases`` (one mode) in workers, starting a new one after each death, until all have an outcome."""
    outcomes: list[Outcome] = []
    left = list(cases)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    while left:
        proc = subprocess.Popen([sys.executable, "-m", "facealign.cli.kernel_check", "--worker",
                                 json.dumps([asdict(c) for c in left])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stderr: list[str] = []
        drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
        drain.start()
        last_line = [time.monotonic()]
        timed_out = threading.Event()

        def watchdog():
            while proc.poll() is None:
                if time.monotonic() - last_line[0] > timeout:
                    timed_out.set()
                    proc.kill()
                    return
                time.sleep(0.5)

        threading.Thread(target=watchdog, daemon=True).start()
        current = None
        for line in proc.stdout:
            last_line[0] = time.monotonic()
            msg = json.loads(line)
            if "start" in msg:
                current = Case(**msg["start"])
                started = time.monotonic()
            else:
                outcomes.append(Outcome(Case(**msg["done"]), msg["ok"], msg.get("detail", ""), msg["seconds"]))
                left.remove(outcomes[-1].case)
                current = None
        proc.wait()
        drain.join(timeout=5)
        if current is not None:  # the worker died (or hung) inside this case
            why = f"no answer in {timeout:g} s" if timed_out.is_set() else _describe_death(proc.returncode,
                                                                                          "".join(stderr))
            outcomes.append(Outcome(current, False, why, time.monotonic() - started))
            left.remove(current)
        elif left:  # died between cases: nothing to blame, but nothing can go on
            raise RuntimeError(f"kernel_check worker: {_describe_death(proc.returncode, ''.join(stderr))}")
    return outcomes


def sweep(cases: list[Case], *, timeout: float = 120.0, threads: int = 1, parallel: int = 2) -> list[Outcome]:
    """Every case's outcome, in the order given; modes run in separate workers, ``parallel`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    groups: dict[tuple[str, int], list[Case]] = {}
    for i, case in enumerate(cases):  # each mode split in ``parallel`` interleaved shares
        groups.setdefault((case.mode, i % parallel), []).append(case)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = [o for group in pool.map(lambda g: _run_group(g, timeout, threads), groups.values()) for o in group]
    order = {c: i for i, c in enumerate(cases)}
    return sorted(results, key=lambda o: order[o.case])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m facealign.cli.kernel_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["hg2-d3-cab"])
    p.add_argument("--widths", nargs="+", type=int, default=list(range(16, 257, 8)))
    p.add_argument("--modes", nargs="+", choices=MODES, default=["float32"])
    p.add_argument("--full-size", action="store_true", help="the models' own input size and depth")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a case may take")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        _worker([Case(**c) for c in json.loads(args.worker)])
        return 0
    cases = [Case(m, w, mode, not args.full_size) for mode in args.modes for m in args.models for w in args.widths]
    outcomes = sweep(cases, timeout=args.timeout)
    for o in outcomes:
        print(f"{o.case.model:<18} {o.case.width or 'own':>4} {o.case.mode:<19} "
              f"{'ok' if o.ok else 'FAILED ' + o.detail}")
    failed = sum(not o.ok for o in outcomes)
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
