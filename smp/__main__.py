"""`python -m smp` runs the command line."""

import sys

from smp.cli import main

sys.exit(main())
