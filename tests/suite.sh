#!/usr/bin/env bash
# `make test`: every test, in three pytest runs. The Slurm tests spend most of their time waiting on the
# scheduler (requeues, lost nodes, KillWait), so they run beside the demo's test, which trains on both cores;
# then everything else. The same tests as `pytest tests`, about 5 minutes sooner on 2 cores
# (docs/getting-started.md). Exit status: 0 when all three passed, else 1.
#
#   bash tests/suite.sh .venv/bin/python [pytest options...]
set -uo pipefail
cd "$(dirname "$0")/.."
py="${1:?usage: bash tests/suite.sh PYTHON [pytest options...]}"
shift
say() { printf '[make test] %s\n' "$*"; }

log="$(mktemp -t facealign-slurm-tests.XXXXXX)"
say "tests/test_slurm.py runs beside tests/test_demo.py; its report follows the demo's"
"$py" -m pytest tests/test_slurm.py "$@" > "$log" 2>&1 &
slurm=$!
trap 'kill "$slurm" 2>/dev/null; rm -f "$log"' EXIT
"$py" -m pytest tests/test_demo.py "$@"
demo=$?
wait "$slurm"
slurm_status=$?
say "tests/test_slurm.py (run beside the demo's test):"
cat "$log"
"$py" -m pytest tests --ignore=tests/test_demo.py --ignore=tests/test_slurm.py "$@"
rest=$?

outcome() { [ "$1" = 0 ] && echo passed || echo "FAILED (pytest exit $1)"; }
say "demo: $(outcome $demo); slurm: $(outcome $slurm_status); the rest: $(outcome $rest)"
[ "$demo" = 0 ] && [ "$slurm_status" = 0 ] && [ "$rest" = 0 ]
