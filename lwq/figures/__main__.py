"""`python -m lwq.figures [options]`: see lwq/figures/cli.py and plots/README.md."""

import sys

from lwq.figures.cli import main

sys.exit(main())
