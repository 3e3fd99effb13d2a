"""Moved to facealign.cli.demo; ``python -m facealign.demo`` keeps working for one release."""
import sys

if __name__ == "__main__":
    from facealign.cli.demo import main

    sys.exit(main())
from facealign._moved import alias  # noqa: E402

alias(__name__, "facealign.cli.demo")
