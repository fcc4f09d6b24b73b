"""`python -m specviz ...`: the command line (see specviz/cli/main.py)."""

import sys

from specviz.cli.main import main

sys.exit(main())
