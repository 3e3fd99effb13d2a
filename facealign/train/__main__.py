"""``python -m facealign.train --job jobs/<name>.yaml``: see facealign.cli.train."""
import sys

from facealign.cli.train import main

sys.exit(main())
