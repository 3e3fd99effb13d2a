"""What every benchmark writes: the machine it ran on, its settings and results, as JSON."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path


def write_report(name: str, out, settings: dict, results, **machine) -> None:
    """Write bench/results/<...>.json with the machine (plus ``machine`` extras) and the time."""
    from facealign.platform import cpu_isa

    report = {"benchmark": name,
              "machine": {"cpu": cpu_isa.cpu_model(), "cores": os.cpu_count(), "onednn_isa": cpu_isa.enable().describe(),
                          "platform": platform.platform(),
                          "python": platform.python_version(), **machine},
              "settings": settings, "results": results, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
