"""A plugin whose module calls sys.exit at import: cnnbench must record it as broken, not exit with it."""

import sys

sys.exit(3)
