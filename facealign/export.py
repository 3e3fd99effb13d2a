"""Moved: the library to facealign.serve.export, the command line to facealign.cli.export; this path is kept for one release."""
import sys

if __name__ == "__main__":
    from facealign.cli.export import main

    sys.exit(main())
from facealign._moved import alias  # noqa: E402

alias(__name__, "facealign.serve.export")
