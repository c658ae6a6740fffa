"""`python -m hookgpt ...` is the `hookgpt` command.

The command line is the project's top layer (it runs analyses and renderers on top of this
library), so it lives in `analyses.cli`. This entry point only hands over to it; no module of the
`hookgpt` library imports `analyses`.
"""

import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("analyses.cli").main())
