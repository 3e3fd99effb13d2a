"""`make test` (tests/suite.sh) runs the same tests as `pytest tests`, each once, and fails when one of its three
pytest runs fails while the others pass."""
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # four pytest runs collecting the test modules (MXNet imported in each)

DEMO = "tests/test_demo.py::test_make_demo_learns_and_works_on_real_photographs"


def _collected(text):
    return re.findall(r"^(tests/test_\w+\.py::.+)$", text, flags=re.M)


def test_the_three_runs_hold_every_test_once_and_one_failing_run_fails_make_test():
    # collected only; the demo's run left with no test, which pytest reports with exit 5
    suite = subprocess.run(["bash", str(REPO / "tests" / "suite.sh"), sys.executable, "--collect-only", "-q", "-p",
                            "no:cacheprovider", "--deselect", DEMO], capture_output=True, text=True, cwd=REPO,
                           timeout=600)
    assert suite.returncode == 1, suite.stdout[-3000:] + suite.stderr[-3000:]
    assert "demo: FAILED (pytest exit 5); slurm: passed; the rest: passed" in suite.stdout, suite.stdout[-3000:]
    plain = subprocess.run([sys.executable, "-m", "pytest", "tests", "--collect-only", "-q", "-p", "no:cacheprovider"],
                           capture_output=True, text=True, cwd=REPO, timeout=600)
    assert plain.returncode == 0, plain.stdout[-3000:]
    ids = _collected(suite.stdout)
    assert len(ids) == len(set(ids)) > 500 and sorted(ids + [DEMO]) == sorted(_collected(plain.stdout))
