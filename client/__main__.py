"""`python -m ecsnap ...`: the same as the `ecsnap` command."""

import sys

from ecsnap.cli import main

sys.exit(main())
