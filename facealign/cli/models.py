"""``facealign-models``: list the zoo with parameter counts, reference sizes and the cost of one face."""
from __future__ import annotations

import argparse
import json
import sys

from facealign.models.cost import multiply_adds
from facealign.models.specs import list_models
from facealign.models.zoo import count_parameters, get_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="facealign-models", description="List the named models of facealign's zoo: "
                                "parameters, size, and GFLOPs (2 per multiply-add) of one face at the model's input "
                                "size.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    rows = []
    for name in list_models():
        net = get_model(name)
        macs = multiply_adds(net, net.spec.input_size)
        rows.append({"model": name, **net.spec.to_dict(), **count_parameters(net), "multiply_adds": macs,
                     "gflops": round(2 * macs / 1e9, 4)})
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'model':<18} {'topology':<9} {'stacks':>6} {'depth':>5} {'block':<10} {'width':>5} {'input':>5} "
          f"{'dims':>4} {'params':>11} {'size MB':>7} {'GFLOPs':>7}")
    for r in rows:
        print(f"{r['model']:<18} {r['topology']:<9} {r['num_stacks']:>6} {r['depth']:>5} {r['block']:<10} "
              f"{r['width']:>5} {r['input_size']:>5} {r['landmark_dims']:>4} {r['trainable']:>11,} {r['size_mb']:>7} "
              f"{r['gflops']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
