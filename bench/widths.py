#!/usr/bin/env python
"""Every width the spec accepts, through oneDNN: the full sweep of facealign.cli.kernel_check.

Every block type (the zoo's hg2-d3-cab, hg2-d3-hpm, hg2-d3-inception, hg2-d4-resnet and sat2-d3-cab) at
every width from 16 to 256 in steps of 8 that the spec accepts, and every zoo model at its own size, in
float32 and bfloat16 training and the bfloat16 and int8 inference graphs: one hybridised pass each, in
guarded worker processes (a signal fails one case). Prints a table of failures per model and mode and
writes JSON. The tests run a spread of it (tests/test_kernel_check.py).

    python bench/widths.py --out bench/results/widths.json
    FACEALIGN_ONEDNN_CONCAT_ALIGNMENT=1 python bench/widths.py --out /tmp/before.json   # the graph before the fix
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_report  # noqa: E402
from facealign.models import get_model_spec, list_models  # noqa: E402
from facealign.cli.kernel_check import MODES, Case, sweep  # noqa: E402
from facealign.models.specs import width_problem  # noqa: E402

BLOCK_MODELS = ["hg2-d3-cab", "hg2-d3-hpm", "hg2-d3-inception", "hg2-d4-resnet", "sat2-d3-cab", "hg2-d3-mobile"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--out", default="bench/results/widths.json")
    args = p.parse_args(argv)
    cases = []
    for mode in args.modes:
        for model in BLOCK_MODELS:
            spec = get_model_spec(model)
            cases += [Case(model, w, mode) for w in range(16, 257, 8) if width_problem(spec.topology, spec.block, w) is None]
        cases += [Case(model, None, mode, small=False) for model in list_models()]
    started = time.perf_counter()
    outcomes = sweep(cases)
    seconds = time.perf_counter() - started
    print(f"{'model':<18} {'mode':<19} {'cases':>5} {'failed':>6}  failed widths")
    rows = []
    for mode in args.modes:
        for model in BLOCK_MODELS + ["(zoo, own size)"]:
            mine = [o for o in outcomes if o.case.mode == mode
                    and ((o.case.small and o.case.model == model) or (not o.case.small and model.startswith("(zoo")))]
            failed = [o for o in mine if not o.ok]
            rows.append({"model": model, "mode": mode, "cases": len(mine), "failed": len(failed),
                         "failures": [{"model": o.case.model, "width": o.case.width, "detail": o.detail} for o in failed]})
            print(f"{model:<18} {mode:<19} {len(mine):>5} {len(failed):>6}  "
                  + " ".join(str(o.case.width or o.case.model) for o in failed))
    total_failed = sum(not o.ok for o in outcomes)
    print(f"{len(outcomes) - total_failed} passed, {total_failed} failed in {seconds:.0f} s")
    write_report("widths", args.out, {"modes": args.modes, "widths": "16..256 step 8, where the spec accepts them",
                                      "small": "64 -> 32 px, depth 2, batch 2"}, rows, seconds=round(seconds, 1))
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
