"""``python -m facealign.train --job jobs/<name>.yaml``: the trainer's command line, under horovodrun or alone.

    horovodrun -np 4 python -m facealign.train --job jobs/sat2-d3-cab.yaml --set optim.lr=2e-4

Exit status: 0 finished; 75 stopped by a signal after a checkpoint (requeue); 1 a run-time failure (a
lost or stalled rank among them: the launchers restart on it); 2 a job that cannot start
(facealign.errors, facealign.train.faults). Each is one line on stderr.
"""
from __future__ import annotations

import argparse
import faulthandler
import os
import sys
from pathlib import Path

from facealign.platform import cpu_isa

cpu_isa.enable()  # oneDNN reads its ISA cap once, when MXNet loads: before the trainer's imports bring it in

from facealign.errors import TrainerError  # noqa: E402
from facealign.spec import components  # noqa: E402
from facealign.train.faults import exit_code_for, write_exit  # noqa: E402
from facealign.train.loop import train  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m facealign.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", required=True, help="job spec (YAML); see jobs/ and facealign/spec/schema.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set optim.lr=2e-4 (repeatable)")
    p.add_argument("--run-dir", help="run directory (default: <run.out_root>/<run.name>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    faulthandler.enable()  # a native crash (SIGSEGV, SIGABRT) in a rank prints where each Python thread was
    try:
        spec = components.load(args.job, args.set, check_files=True)
        return train(spec, Path(args.run_dir or Path(spec.run.out_root) / spec.run.name))
    except TrainerError as e:
        print(f"facealign.train: {e}", file=sys.stderr, flush=True)
        code = exit_code_for(e)
        if os.environ.get("FACEALIGN_EXIT_FILE") and os.environ.get("HOROVOD_RANK", "0") == "0" \
                and not Path(os.environ["FACEALIGN_EXIT_FILE"]).exists():  # before train() could say
            write_exit(Path(os.environ["FACEALIGN_EXIT_FILE"]), code, str(e))
        return code


if __name__ == "__main__":
    sys.exit(main())
