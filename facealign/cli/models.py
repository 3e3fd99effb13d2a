"""``facealign-models``: list the zoo with parameter counts and reference sizes."""
from __future__ import annotations

import argparse
import json
import sys

from facealign.models.specs import list_models
from facealign.models.zoo import count_parameters, get_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="facealign-models", description="List the named models of facealign's zoo.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    rows = []
    for name in list_models():
        net = get_model(name)
        rows.append({"model": name, **net.spec.to_dict(), **count_parameters(net)})
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'model':<18} {'topology':<9} {'stacks':>6} {'depth':>5} {'block':<10} {'dims':>4} "
          f"{'params':>11} {'size MB':>7}")
    for r in rows:
        print(f"{r['model']:<18} {r['topology']:<9} {r['num_stacks']:>6} {r['depth']:>5} {r['block']:<10} "
              f"{r['landmark_dims']:>4} {r['trainable']:>11,} {r['size_mb']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
