"""Moved: the library to facealign.cli.infer, the command line to facealign.cli.infer; this path is kept for one release."""
import sys

if __name__ == "__main__":
    from facealign.cli.infer import main

    sys.exit(main())
from facealign._moved import alias  # noqa: E402

alias(__name__, "facealign.cli.infer")
