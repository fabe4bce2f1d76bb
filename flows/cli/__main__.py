"""`python -m flows.cli`: the `vitonprep` command."""

import sys

from flows.cli import main

sys.exit(main())
