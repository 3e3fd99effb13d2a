"""Moved: the library to facealign.evaluation.report, the command line to facealign.cli.eval; this path is kept for one release."""
import sys

if __name__ == "__main__":
    from facealign.cli.eval import main

    sys.exit(main())
from facealign._moved import alias  # noqa: E402

alias(__name__, "facealign.evaluation.report")
